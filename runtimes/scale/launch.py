"""`valle-export serve MODEL --ray`: connect to (or start) Ray, start Serve's HTTP proxy on the given
interface (loopback by default: Serve itself would bind every interface), run the application, wait, and on
Ctrl-C / SIGTERM remove what was started (the whole local Ray instance, or only this app on a cluster).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .config import APP_NAME, ScaleConfig

REPO = Path(__file__).resolve().parent.parent.parent


def runtime_env() -> dict:
    """Workers import this checkout's code (a source tree is not always installed on every node)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def start(config: ScaleConfig, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          num_cpus: int | None = None, proxy_location: str = "HeadOnly") -> str:
    """Deploy and return the base URL. `address`: an existing cluster (`auto`, `ray://...`, `HOST:PORT`);
    None starts a local instance on loopback."""
    import ray
    from ray import serve

    from .app import application

    if not ray.is_initialized():
        local = {} if address else {"num_cpus": num_cpus, "_node_ip_address": "127.0.0.1"}
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env=runtime_env(), **local)
    serve.start(http_options={"host": host, "port": port}, proxy_location=proxy_location)
    serve.run(application(config), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop(started_ray: bool) -> None:
    import ray
    from ray import serve

    try:
        if started_ray:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def run_forever(config: ScaleConfig, host: str, port: int, address: str | None, on_ready=None) -> None:
    """Block until interrupted; always stop what was started."""
    try:
        base = start(config, host, port, address)
        if on_ready:
            on_ready(base)
        while True:
            time.sleep(3600)
    finally:
        stop(started_ray=address is None)
