"""The settings of a Ray deployment, one dataclass shared by the CLI, `serve run` arguments and the KubeRay
manifest, with the limits that turn overload into a fast 429 derived in one place. Imports: stdlib only.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from valle_export.errors import BadInput

APP_NAME = "valle"


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    model: str
    backend: str = "auto"
    variant: str = "auto"
    codec: str | None = None
    decoder: str | None = None
    threads: int = 1  # backend threads per engine replica (= the CPUs it reserves)
    n_ctx: int = 2048
    voices_dir: str | None = None  # on the registry's node: shared storage keeps voices across moves
    voice_specs: tuple[str, ...] = ()
    model_name: str = "valle"
    max_rows: int = 8
    max_queue: int = 64
    max_kv_mb: int = 1024
    replicas: int = 1  # engine replicas when not autoscaling
    autoscale: tuple[int, int] | None = None  # (min, max) engine replicas
    ingress_replicas: int = 1
    max_replicas_per_node: int | None = 1  # one engine per machine: its batch, not a second copy, uses the cores
    retries: int = 2  # resubmissions of a request whose engine replica died
    event_timeout_s: float = 300.0  # no event for this long: the request fails (never hangs)
    queued_per_engine: int = 4  # handle-side queue per engine replica beyond its ongoing requests

    # --- limits --------------------------------------------------------------------------------------------
    @property
    def engine_ongoing(self) -> int:
        """Requests one engine replica holds: its rows plus its own queue (beyond: the engine's 429)."""
        return self.max_rows + self.max_queue

    @property
    def engine_queued(self) -> int:
        """Requests waiting in the ingress' handle for a replica slot; beyond it: BackPressureError -> 429."""
        return self.queued_per_engine * self.max_engines

    @property
    def max_engines(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas

    @property
    def ingress_ongoing(self) -> int:
        """High enough that the engines' limits, which answer 429, are reached before the ingress' (503)."""
        return 2 * (self.engine_ongoing * self.max_engines + self.engine_queued)

    def voices_folder(self) -> Path:
        if self.voices_dir:
            return Path(self.voices_dir)
        data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        return data_home / "valle-export" / "voices"


def parse_autoscale(text: str) -> tuple[int, int]:
    """`MIN:MAX` engine replicas, 0 <= MIN <= MAX, MAX >= 1."""
    lo, sep, hi = text.partition(":")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise BadInput(f"--autoscale takes MIN:MAX replicas (e.g. 1:4), got {text!r}")
    lo_n, hi_n = int(lo), int(hi)
    if hi_n < 1 or lo_n > hi_n:
        raise BadInput(f"--autoscale {text}: need 0 <= MIN <= MAX and MAX >= 1")
    return lo_n, hi_n


_INTS = ("threads", "n_ctx", "max_rows", "max_queue", "max_kv_mb", "replicas", "ingress_replicas", "retries",
         "queued_per_engine")


def from_args(args: dict) -> ScaleConfig:
    """`serve run runtimes.scale.app:build model=... replicas=2` (strings) or a config file's `args:` (typed).
    Unknown keys are refused by name, so a typo is not silently ignored."""
    fields = {f.name for f in dataclasses.fields(ScaleConfig)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise BadInput(f"unknown argument(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    if "model" not in args:
        raise BadInput("the argument model=PATH (the exported model, on every node) is required")
    values = dict(args)
    try:
        for key in _INTS:
            if key in values:
                values[key] = int(values[key])
        if "event_timeout_s" in values:
            values["event_timeout_s"] = float(values["event_timeout_s"])
        if values.get("max_replicas_per_node") in ("", "none", "None"):
            values["max_replicas_per_node"] = None
        elif "max_replicas_per_node" in values:
            values["max_replicas_per_node"] = int(values["max_replicas_per_node"])
    except (TypeError, ValueError) as err:
        raise BadInput(f"a numeric argument is not a number ({err})") from None
    if isinstance(values.get("autoscale"), str):
        values["autoscale"] = parse_autoscale(values["autoscale"])
    elif values.get("autoscale") is not None:
        values["autoscale"] = tuple(int(x) for x in values["autoscale"])
    specs = values.get("voice_specs", ())
    values["voice_specs"] = tuple(specs.split(",") if isinstance(specs, str) else specs)
    config = ScaleConfig(**values)
    check(config)
    return config


def check(config: ScaleConfig) -> None:
    for name in ("replicas", "ingress_replicas", "max_rows", "threads"):
        if getattr(config, name) < 1:
            raise BadInput(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in ("max_queue", "retries", "queued_per_engine"):
        if getattr(config, name) < 0:
            raise BadInput(f"{name} must be at least 0, got {getattr(config, name)}")
    if config.event_timeout_s <= 0:
        raise BadInput("event_timeout_s must be positive")
