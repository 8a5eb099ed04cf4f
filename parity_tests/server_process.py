"""A real `valle-export serve` on loopback for tests: its own process group on a free port, waited for
until ready, always stopped (the group is killed, so no engine thread or worker outlives a test)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving_process(args: list[str], log_path: Path, label: str, ready_s: float, env: dict | None = None,
                    poll_s: float = 0.2, stop_s: float = 10.0):
    """Yield the base URL of `valle-export serve ARGS --port P` run in its own process group once /ready
    answers 200; SIGTERM the whole group whatever happens (SIGKILL only if that hangs past `stop_s`)."""
    port = free_port()
    log = open(log_path.parent / f"{log_path.name}-{port}.log", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "valle_export.cli", "serve", *args, "--port", str(port)],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{label} exited with {proc.returncode}: {log.read().decode()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:  # refused, reset, timed out, or an HTTP error status while warming up
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{label} not ready in time")
            time.sleep(poll_s)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(stop_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def running_server(model: Path, voices: Path, *extra: str, ready_s: float = 90.0):
    """The one-machine server for `model` (a context manager yielding its base URL)."""
    return serving_process([str(model), "--voices-dir", str(voices), "--threads", "1", *extra],
                           voices.parent / "serve", "server", ready_s)


def post(base: str, path: str, body, timeout: float = 60.0) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of a JSON POST; an HTTP error status is returned."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def get(base: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def metric(base: str, name: str) -> float:
    text = get(base, "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
