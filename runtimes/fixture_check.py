"""Run a golden fixture folder (a native checkpoint + case files recorded from the ORIGINAL implementation)
through any `Backend` and report, per case, the measured error and the verdict.

Case files: every `cases*.safetensors` of the folder. When the folder holds the original's adapter
(`lora.sft`), files whose name ends in `_nolora` were recorded without it and every other file with it: the
caller supplies a backend for each (`check_fixture(folder, backend_for)`).
Case kinds: every `<case>.logits` tensor (one pass, compared over its stored rows; task passes `ns.*`, `sr.*`
carry their task row; `stt` compares hidden states, the original's output at this commit, and `stt.head9` the
designed head) and every greedy run (`greedy_*ar_nar`, `greedy_len`, `greedy_*nar_len*`, compared exactly).
`greedy_stt` is reported but not compared: it argmaxes the original's unprojected hidden states (a regression,
README "Tasks"). Torch-free: the fixture files are read with safetensors' numpy API.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from typing import Callable

import numpy as np

from valle_export import contracts, exactness, names, sequence as seq
from valle_export.errors import BadInput, RefusedPass

from .backend import Backend
from .pipeline import Conditioning, DemaskSettings, demask_nar_len, generate_ar, generate_len, generate_nar
from .samplers import SamplerSettings

CASES_FILE = "cases.safetensors"
CASES_GLOB = "cases*.safetensors"
LORA_FILE = "lora.sft"  # the original's adapter beside a fixture's checkpoint
NO_ADAPTER_SUFFIX = "_nolora"  # case files recorded without the adapter
STT_CASE, STT_HEAD_CASE, STT_HEAD_LOGITS = "stt", "stt.head9", "stt.head9_logits"
TASK_PREFIXES = tuple(f"{task}." for task in names.TASK_IDS)
# the original's sampler default top-n-sigma, in effect where a greedy run's kwargs do not set one
DEFAULT_TOP_NO = 1.0
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
    file: str = CASES_FILE

    def cond(self, prefix: str) -> Conditioning:
        t = self.tensors
        prompt = t.get(f"{prefix}.prom")
        task = t.get(f"{prefix}.task_id")
        return Conditioning(t[f"{prefix}.phn"], int(t[f"{prefix}.lang"][0]), prompt,
                            task=None if task is None else int(task[0]))

    @property
    def uses_adapter(self) -> bool:
        """Recorded with the folder's adapter applied (the folder has one and the file is not `_nolora`)."""
        return (self.folder / LORA_FILE).is_file() and not Path(self.file).stem.endswith(NO_ADAPTER_SUFFIX)

    @property
    def label(self) -> str:
        """Prefix of this file's case names in reports ('' for the main `cases.safetensors`)."""
        return "" if self.file == CASES_FILE else f"{Path(self.file).stem.removeprefix('cases')}:"


def case_files(folder: str | Path) -> list[str]:
    """Every case file of a fixture folder, `cases.safetensors` first."""
    folder = Path(folder)
    found = sorted(p.name for p in folder.glob(CASES_GLOB) if p.is_file())
    if CASES_FILE not in found:
        raise BadInput(f"fixture folder has no {CASES_FILE}", folder)
    return [CASES_FILE] + [f for f in found if f != CASES_FILE]


def load_fixture(folder: str | Path, file: str = CASES_FILE) -> Fixture:
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    path = folder / file
    if not path.is_file():
        raise BadInput(f"fixture folder has no {file}", folder)
    try:
        with safe_open(str(path), "np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise BadInput(f"corrupt fixture file ({err})", path) from None
    return Fixture(folder, tensors, json.loads(meta.get("greedy", "{}")), file)


def _pass_spec(fx: Fixture, layout, case: str) -> seq.PassSpec:
    t, c = fx.tensors, fx.cond(case)
    if case == STT_CASE:
        return seq.stt_pass(layout, t[f"{case}.resp"], c.lang, c.phn)
    kind = case.split(".", 1)[1] if case.startswith(TASK_PREFIXES) else case  # ns.ar -> ar (task from task_id)
    if kind.startswith("ar"):
        codes = t.get(f"{case}.resp_prefix", np.zeros(0, np.int64)).reshape(-1)
        return seq.ar_pass(layout, c.phn, c.lang, c.prompt, codes, c.task)
    if kind.startswith("nar."):
        return seq.nar_pass(layout, c.phn, c.lang, c.prompt, t[f"{case}.resp"], int(kind.split(".")[1]), c.task)
    if kind == "len":
        return seq.len_pass(layout, c.phn, c.lang, c.prompt, t[f"{case}.digits"])
    if kind.startswith("narlen"):
        return seq.nar_len_pass(layout, c.phn, c.lang, c.prompt, t[f"{case}.resp_masked"], c.task)
    raise BadInput(f"unknown pass case {case!r}", fx.folder / fx.file)


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


def _pass_outputs(fx: Fixture, backend: Backend, case: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, got, want) of one recorded pass: its logits; for stt its hidden states and the designed head's."""
    spec = _pass_spec(fx, backend.layout, case)
    want = fx.tensors[f"{case}.logits"]
    if case != STT_CASE:
        return [(case, backend.logits(spec)[-want.shape[0]:], want)]
    out = [(case, backend.pass_hidden(spec)[-want.shape[0]:], want)]
    if STT_HEAD_LOGITS in fx.tensors:
        head = fx.tensors[STT_HEAD_LOGITS]
        out.append((STT_HEAD_CASE, backend.logits(spec)[-head.shape[0]:], head))
    return out


def check_pass_cases(fx: Fixture, backend: Backend) -> list[CaseResult]:
    cases = sorted(k[: -len(".logits")] for k in fx.tensors if k.endswith(".logits"))
    results = []
    for case in cases:
        try:
            outputs = _pass_outputs(fx, backend, case)
        except RefusedPass as err:
            results.append(_refusal(fx.label + case, err, backend))
            continue
        verdict = _verdict(backend, _pass_spec(fx, backend.layout, case).head)
        for name, got, want in outputs:
            results.append(compare_logits(fx.label + name, got, want, verdict.exact,
                                          verdict.bound or APPROX_LOGITS_REL_TOL))
    return results


def _greedy_ar_nar(fx: Fixture, backend: Backend, run: str, exact: bool) -> list[CaseResult]:
    t, c, label = fx.tensors, fx.cond(run), fx.label + run
    max_frames = int(fx.greedy.get(run, {}).get("kwargs", {}).get("max_duration", 500))
    results = []
    try:
        ar = generate_ar(backend, c, max_frames)
        results.append(compare_tokens(f"{label}.ar_codes", ar, t[f"{run}.ar_codes"], exact))
    except RefusedPass as err:
        results.append(_refusal(f"{label}.ar_codes", err, backend))
    # the NAR stage runs from the recorded level-0 codes, so it is checked even where the AR is refused
    nar = generate_nar(backend, c, t[f"{run}.ar_codes"])
    results.append(compare_tokens(f"{label}.codes", nar, t[f"{run}.codes"], exact))
    return results


def _greedy_len(fx: Fixture, backend: Backend, exact: bool) -> list[CaseResult]:
    t = fx.tensors
    try:
        r = generate_len(backend, fx.cond("greedy_len"))
    except RefusedPass as err:
        return [_refusal(fx.label + "greedy_len.value", err, backend)]
    results = [compare_tokens(fx.label + "greedy_len.value", np.array([r.value]), t["greedy_len.value"], exact)]
    if "greedy_len.step_inputs" in t:
        want = t["greedy_len.step_inputs"]
        got = np.full((len(r.step_inputs), want.shape[1]), -1, dtype=np.int64)
        for i, row in enumerate(r.step_inputs):
            got[i, : min(len(row), got.shape[1])] = row[: got.shape[1]]
        results.append(compare_tokens(fx.label + "greedy_len.step_inputs", got, want, exact))
    return results


def _greedy_nar_len(fx: Fixture, backend: Backend, run: str, exact: bool) -> list[CaseResult]:
    t, label = fx.tensors, fx.label + run
    kwargs = fx.greedy.get(run, {}).get("kwargs", {})
    c, want = fx.cond(run), t[f"{run}.codes"]
    top_no = float(kwargs.get("top_no", DEFAULT_TOP_NO))
    settings = DemaskSettings(steps=int(kwargs.get("max_steps", 25)),
                              sampler=SamplerSettings(temperature=0.0, top_no=top_no))
    try:
        level0, steps = demask_nar_len(backend, c, want.shape[0], settings)
    except RefusedPass as err:
        return [_refusal(f"{label}.codes", err, backend)]
    # each stage on its own: the demasking's level 0, then the NAR levels from the recorded level 0 (as for
    # AR+NAR), so an approximate backend's one flipped near-tie is not counted again in every later level
    return [compare_tokens(f"{label}.step_inputs", np.stack(steps), t[f"{run}.step_inputs"], exact),
            compare_tokens(f"{label}.level0", level0, want[:, 0], exact),
            compare_tokens(f"{label}.codes", generate_nar(backend, c, want[:, 0]), want, exact)]


def _greedy_runs(fx: Fixture) -> list[str]:
    return sorted({k.split(".")[0] for k in fx.tensors if k.startswith("greedy_")})


def check_greedy_runs(fx: Fixture, backend: Backend) -> list[CaseResult]:
    exact, results = _is_exact(backend), []
    for run in _greedy_runs(fx):
        if run.endswith("ar_nar"):
            results += _greedy_ar_nar(fx, backend, run, exact)
        elif run == "greedy_len":
            results += _greedy_len(fx, backend, exact)
        elif "nar_len" in run:
            results += _greedy_nar_len(fx, backend, run, exact)
        elif run == "greedy_stt":
            results.append(CaseResult(fx.label + run, True, status="skipped", detail="(the original argmaxes "
                                      "unprojected hidden states here, a regression; head 9 is used instead)"))
        else:
            results.append(CaseResult(fx.label + run, False, detail="unknown greedy run", status="refused"))
    return results


def check_fixture(folder: str | Path, backend_for: Callable[[bool], Backend | None]) -> list[CaseResult]:
    """Every case file of `folder`; `backend_for(uses_adapter)` gives the backend for a file (with the folder's
    adapter merged or applied, or without it), or None to leave the file out."""
    results = []
    for file in case_files(folder):
        fx = load_fixture(folder, file)
        backend = backend_for(fx.uses_adapter)
        if backend is not None:
            results += check_pass_cases(fx, backend) + check_greedy_runs(fx, backend)
    return results
