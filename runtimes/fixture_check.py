"""Run a golden fixture folder (a native checkpoint + `cases.safetensors` recorded from the ORIGINAL
implementation) through any `Backend` and report, per case, the measured error and the verdict.

Case kinds: every `<case>.logits` tensor (one pass, compared over its stored rows) and the four greedy
runs (`greedy_ar_nar`, `greedy_len`, `greedy_nar_len`, `greedy_nar_len_topno`, compared exactly).
Torch-free: the fixture file is read with safetensors' numpy API.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from valle_export import contracts, exactness, sequence as seq
from valle_export.errors import BadInput, RefusedPass

from .backend import Backend
from .pipeline import Conditioning, DemaskSettings, demask_nar_len, generate_ar, generate_len, generate_nar
from .samplers import SamplerSettings

CASES_FILE = "cases.safetensors"
# The contracts (valle_export.contracts): exact backends 1e-4 relative per case and identical tokens;
# approximate ones the bound of their pass's verdict (tanh GELU on llama.cpp: 2e-3; measured on the mrq-public
# fixture <= 3.3e-4 with 100 % argmax and token agreement), else 1e-2, and 90 % token agreement.
LOGITS_REL_TOL = contracts.LOGITS_REL_EXACT
APPROX_LOGITS_REL_TOL = contracts.APPROX_LOGITS_REL
APPROX_TOKEN_AGREEMENT = contracts.APPROX_TOKEN_AGREEMENT


@dataclasses.dataclass(frozen=True)
class CaseResult:
    name: str
    ok: bool
    max_abs: float | None = None
    rel: float | None = None
    detail: str = ""
    status: str = "exact"  # exact / approximate / refused

    def line(self) -> str:
        err = "" if self.max_abs is None else f" max_abs={self.max_abs:.3e} rel={self.rel:.3e}"
        return f"{'ok  ' if self.ok else 'FAIL'} {self.status:11s} {self.name:28s}{err} {self.detail}".rstrip()


def _is_exact(backend) -> bool:
    return bool(getattr(backend, "exact", True))


def _verdict(backend, head: str) -> exactness.Verdict:
    """The backend's stated verdict for a pass (backends without per-pass verdicts state `exact`)."""
    verdicts = getattr(backend, "verdicts", None)
    if verdicts:
        return verdicts[exactness.pass_kind(head)]
    if _is_exact(backend):
        return exactness.Verdict(exactness.EXACT)
    return exactness.Verdict(exactness.APPROXIMATE, getattr(backend, "approximation", "") or "approximate")


def _refusal(name: str, err: RefusedPass, backend) -> CaseResult:
    """A refusal meets the contract only where the backend declared that pass kind impossible."""
    declared = err.kind in getattr(backend, "refused_kinds", ())
    return CaseResult(name, declared, detail=f"({err.problem})" if declared else f"undeclared refusal: {err.problem}",
                      status="refused")


@dataclasses.dataclass
class Fixture:
    folder: Path
    tensors: dict[str, np.ndarray]
    greedy: dict

    def cond(self, prefix: str) -> Conditioning:
        t = self.tensors
        prompt = t.get(f"{prefix}.prom")
        return Conditioning(t[f"{prefix}.phn"], int(t[f"{prefix}.lang"][0]), prompt)


def load_fixture(folder: str | Path) -> Fixture:
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    path = folder / CASES_FILE
    if not path.is_file():
        raise BadInput(f"fixture folder has no {CASES_FILE}", folder)
    try:
        with safe_open(str(path), "np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise BadInput(f"corrupt fixture file ({err})", path) from None
    return Fixture(folder, tensors, json.loads(meta.get("greedy", "{}")))


def _pass_spec(fx: Fixture, layout, case: str) -> seq.PassSpec:
    t, c = fx.tensors, fx.cond(case)
    if case.startswith("ar"):
        codes = t.get(f"{case}.resp_prefix", np.zeros(0, np.int64)).reshape(-1)
        return seq.ar_pass(layout, c.phn, c.lang, c.prompt, codes)
    if case.startswith("nar."):
        return seq.nar_pass(layout, c.phn, c.lang, c.prompt, t[f"{case}.resp"], int(case.split(".")[1]))
    if case == "len":
        return seq.len_pass(layout, c.phn, c.lang, c.prompt, t[f"{case}.digits"])
    if case.startswith("narlen"):
        return seq.nar_len_pass(layout, c.phn, c.lang, c.prompt, t[f"{case}.resp_masked"])
    raise BadInput(f"unknown pass case {case!r}", fx.folder)


def compare_logits(name: str, got: np.ndarray, want: np.ndarray, exact: bool = True,
                   approx_bound: float = APPROX_LOGITS_REL_TOL) -> CaseResult:
    """Exact contract: rel <= 1e-4 and identical argmax. Approximate: rel <= the verdict's measured bound (1e-2
    where none is stated, e.g. quantized weights), argmax agreement >= 90%."""
    status = "exact" if exact else "approximate"
    if got.shape != want.shape:
        return CaseResult(name, False, detail=f"shape {got.shape} != expected {want.shape}", status=status)
    max_abs, rel = contracts.max_abs_error(got, want), contracts.rel_error(got, want)
    agree = float((got.argmax(-1) == want.argmax(-1)).mean())
    if exact:
        ok = contracts.within(rel, LOGITS_REL_TOL) and agree == 1.0
        detail = f"(tol {LOGITS_REL_TOL:g}{'' if agree == 1.0 else ', argmax differs'})"
    else:
        ok = contracts.within(rel, approx_bound) and agree >= APPROX_TOKEN_AGREEMENT
        detail = f"(argmax agreement {agree:.0%}; bounds {approx_bound:g}, {APPROX_TOKEN_AGREEMENT:.0%})"
    return CaseResult(name, ok, max_abs, rel, detail, status)


def compare_tokens(name: str, got: np.ndarray, want: np.ndarray, exact: bool = True) -> CaseResult:
    got, want = np.asarray(got), np.asarray(want)
    status = "exact" if exact else "approximate"
    if got.shape != want.shape:
        return CaseResult(name, False, detail=f"shape {got.shape} != expected {want.shape}", status=status)
    diff = np.argwhere(got != want)
    if exact:
        if len(diff):
            return CaseResult(name, False, detail=f"{len(diff)} tokens differ, first at {tuple(diff[0])}")
        return CaseResult(name, True, detail=f"{got.size} tokens identical")
    agree = 1.0 - len(diff) / max(got.size, 1)
    return CaseResult(name, agree >= APPROX_TOKEN_AGREEMENT, detail=f"token agreement {agree:.1%} of {got.size} "
                      f"(floor {APPROX_TOKEN_AGREEMENT:.0%})", status=status)


def check_pass_cases(fx: Fixture, backend: Backend) -> list[CaseResult]:
    cases = sorted(k[: -len(".logits")] for k in fx.tensors if k.endswith(".logits"))
    results = []
    for case in cases:
        want = fx.tensors[f"{case}.logits"]
        try:
            got = backend.logits(_pass_spec(fx, backend.layout, case))[-want.shape[0]:]
        except RefusedPass as err:
            results.append(_refusal(case, err, backend))
            continue
        verdict = _verdict(backend, _pass_spec(fx, backend.layout, case).head)
        results.append(compare_logits(case, got, want, verdict.exact, verdict.bound or APPROX_LOGITS_REL_TOL))
    return results


def _greedy_ar_nar(fx: Fixture, backend: Backend, exact: bool) -> list[CaseResult]:
    t, c = fx.tensors, fx.cond("greedy_ar_nar")
    max_frames = int(fx.greedy.get("greedy_ar_nar", {}).get("kwargs", {}).get("max_duration", 500))
    results = []
    try:
        ar = generate_ar(backend, c, max_frames)
        results.append(compare_tokens("greedy_ar_nar.ar_codes", ar, t["greedy_ar_nar.ar_codes"], exact))
    except RefusedPass as err:
        results.append(_refusal("greedy_ar_nar.ar_codes", err, backend))
    # the NAR stage runs from the recorded level-0 codes, so it is checked even where the AR is refused
    nar = generate_nar(backend, c, t["greedy_ar_nar.ar_codes"])
    results.append(compare_tokens("greedy_ar_nar.codes", nar, t["greedy_ar_nar.codes"], exact))
    return results


def _greedy_len(fx: Fixture, backend: Backend, exact: bool) -> list[CaseResult]:
    t = fx.tensors
    try:
        r = generate_len(backend, fx.cond("greedy_len"))
    except RefusedPass as err:
        return [_refusal("greedy_len.value", err, backend)]
    results = [compare_tokens("greedy_len.value", np.array([r.value]), t["greedy_len.value"], exact)]
    if "greedy_len.step_inputs" in t:
        want = t["greedy_len.step_inputs"]
        got = np.full((len(r.step_inputs), want.shape[1]), -1, dtype=np.int64)
        for i, row in enumerate(r.step_inputs):
            got[i, : min(len(row), got.shape[1])] = row[: got.shape[1]]
        results.append(compare_tokens("greedy_len.step_inputs", got, want, exact))
    return results


def _greedy_nar_len(fx: Fixture, backend: Backend, run: str, top_no: float, exact: bool) -> list[CaseResult]:
    t = fx.tensors
    kwargs = fx.greedy.get(run, {}).get("kwargs", {})
    c, want = fx.cond(run), t[f"{run}.codes"]
    settings = DemaskSettings(steps=int(kwargs.get("max_steps", 25)),
                              sampler=SamplerSettings(temperature=0.0, top_no=float(kwargs.get("top_no", top_no))))
    try:
        level0, steps = demask_nar_len(backend, c, want.shape[0], settings)
    except RefusedPass as err:
        return [_refusal(f"{run}.codes", err, backend)]
    return [compare_tokens(f"{run}.step_inputs", np.stack(steps), t[f"{run}.step_inputs"], exact),
            compare_tokens(f"{run}.codes", generate_nar(backend, c, level0), want, exact)]


def check_greedy_runs(fx: Fixture, backend: Backend) -> list[CaseResult]:
    t, exact, results = fx.tensors, _is_exact(backend), []
    if "greedy_ar_nar.codes" in t:
        results += _greedy_ar_nar(fx, backend, exact)
    if "greedy_len.value" in t:
        results += _greedy_len(fx, backend, exact)
    for run, top_no in (("greedy_nar_len", 0.0), ("greedy_nar_len_topno", 1.0)):
        if f"{run}.codes" in t:
            results += _greedy_nar_len(fx, backend, run, top_no, exact)
    return results


def check_fixture(folder: str | Path, backend: Backend) -> list[CaseResult]:
    fx = load_fixture(folder)
    return check_pass_cases(fx, backend) + check_greedy_runs(fx, backend)
