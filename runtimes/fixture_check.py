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

from valle_export import sequence as seq
from valle_export.errors import BadInput

from .backend import Backend
from .pipeline import Conditioning, DemaskSettings, demask_nar_len, generate_ar, generate_len, generate_nar

CASES_FILE = "cases.safetensors"
LOGITS_REL_TOL = 1e-4  # max |got - want| / max |want|, per case


@dataclasses.dataclass(frozen=True)
class CaseResult:
    name: str
    ok: bool
    max_abs: float | None = None
    rel: float | None = None
    detail: str = ""

    def line(self) -> str:
        err = "" if self.max_abs is None else f" max_abs={self.max_abs:.3e} rel={self.rel:.3e}"
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:24s}{err} {self.detail}".rstrip()


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


def compare_logits(name: str, got: np.ndarray, want: np.ndarray, rel_tol: float = LOGITS_REL_TOL) -> CaseResult:
    if got.shape != want.shape:
        return CaseResult(name, False, detail=f"shape {got.shape} != expected {want.shape}")
    max_abs = float(np.abs(got - want).max())
    rel = max_abs / float(np.abs(want).max())
    same_argmax = bool((got.argmax(-1) == want.argmax(-1)).all())
    ok = rel <= rel_tol and same_argmax
    return CaseResult(name, ok, max_abs, rel, f"(tol {rel_tol:g}{'' if same_argmax else ', argmax differs'})")


def compare_tokens(name: str, got: np.ndarray, want: np.ndarray) -> CaseResult:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return CaseResult(name, False, detail=f"shape {got.shape} != expected {want.shape}")
    diff = np.argwhere(got != want)
    if len(diff):
        return CaseResult(name, False, detail=f"{len(diff)} tokens differ, first at {tuple(diff[0])}")
    return CaseResult(name, True, detail=f"{got.size} tokens identical")


def check_pass_cases(fx: Fixture, backend: Backend) -> list[CaseResult]:
    cases = sorted(k[: -len(".logits")] for k in fx.tensors if k.endswith(".logits"))
    results = []
    for case in cases:
        want = fx.tensors[f"{case}.logits"]
        got = backend.logits(_pass_spec(fx, backend.layout, case))[-want.shape[0]:]
        results.append(compare_logits(case, got, want))
    return results


def check_greedy_runs(fx: Fixture, backend: Backend) -> list[CaseResult]:
    t, results = fx.tensors, []
    if "greedy_ar_nar.codes" in t:
        c = fx.cond("greedy_ar_nar")
        max_frames = int(fx.greedy.get("greedy_ar_nar", {}).get("kwargs", {}).get("max_duration", 500))
        ar = generate_ar(backend, c, max_frames)
        results.append(compare_tokens("greedy_ar_nar.ar_codes", ar, t["greedy_ar_nar.ar_codes"]))
        results.append(compare_tokens("greedy_ar_nar.codes", generate_nar(backend, c, t["greedy_ar_nar.ar_codes"]),
                                      t["greedy_ar_nar.codes"]))
    if "greedy_len.value" in t:
        r = generate_len(backend, fx.cond("greedy_len"))
        results.append(compare_tokens("greedy_len.value", np.array([r.value]), t["greedy_len.value"]))
        if "greedy_len.step_inputs" in t:
            want = t["greedy_len.step_inputs"]
            got = np.full((len(r.step_inputs), want.shape[1] if want.ndim == 2 else 0), -1, dtype=np.int64)
            for i, row in enumerate(r.step_inputs):
                got[i, : min(len(row), got.shape[1])] = row[: got.shape[1]]
            results.append(compare_tokens("greedy_len.step_inputs", got, want))
    for run, top_no in (("greedy_nar_len", 0.0), ("greedy_nar_len_topno", 1.0)):
        if f"{run}.codes" not in t:
            continue
        kwargs = fx.greedy.get(run, {}).get("kwargs", {})
        c = fx.cond(run)
        want = t[f"{run}.codes"]
        settings = DemaskSettings(steps=int(kwargs.get("max_steps", 25)), top_no=float(kwargs.get("top_no", top_no)))
        level0, steps = demask_nar_len(backend, c, want.shape[0], settings)
        results.append(compare_tokens(f"{run}.step_inputs", np.stack(steps), t[f"{run}.step_inputs"]))
        results.append(compare_tokens(f"{run}.codes", generate_nar(backend, c, level0), want))
    return results


def check_fixture(folder: str | Path, backend: Backend) -> list[CaseResult]:
    fx = load_fixture(folder)
    return check_pass_cases(fx, backend) + check_greedy_runs(fx, backend)
