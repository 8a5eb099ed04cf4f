"""The Ray Serve application: `build(args)` is the import path of `serve run`, serve config files and the
KubeRay RayService manifest (`runtimes.scale.app:build`); `application(config)` is what the CLI runs.

    serve run runtimes.scale.app:build model=/models/valle replicas=2      # or: serve run deploy/ray/serve.yaml

Deployments: `Ingress` (the FastAPI app; light, no model), `Engine` (model + batched engine loop; one per
machine by default: `max_replicas_per_node=1`, `num_cpus` = its backend threads), `Voices` (one replica).
Limits: every deployment sets `max_ongoing_requests` (Serve's default of 5 would queue the 6th stream) and
the engine sets `max_queued_requests`, so overload answers 429 at once instead of waiting.
"""
from __future__ import annotations

from .config import APP_NAME, ScaleConfig, from_args


def engine_options(config: ScaleConfig) -> dict:
    options = {"max_ongoing_requests": config.engine_ongoing, "max_queued_requests": config.engine_queued,
               "ray_actor_options": {"num_cpus": config.threads}, "health_check_period_s": 5.0,
               "graceful_shutdown_timeout_s": 5.0}
    if config.max_replicas_per_node:
        options["max_replicas_per_node"] = config.max_replicas_per_node
    if config.autoscale:
        lo, hi = config.autoscale
        # a batching engine is "busy" at about its batch width, not at 1 request
        options["autoscaling_config"] = {"min_replicas": lo, "initial_replicas": max(lo, 1), "max_replicas": hi,
                                         "target_ongoing_requests": config.max_rows}
    else:
        options["num_replicas"] = config.replicas
    return options


def ingress_options(config: ScaleConfig) -> dict:
    return {"num_replicas": config.ingress_replicas, "max_ongoing_requests": config.ingress_ongoing,
            "ray_actor_options": {"num_cpus": 0}}


def registry_options(config: ScaleConfig) -> dict:
    return {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0}}


def application(config: ScaleConfig):
    """The bound application (ingress -> engine, voices)."""
    from ray import serve

    from .remote import Ingress
    from .replicas import EngineReplica, VoiceRegistry

    engine = serve.deployment(EngineReplica, name="Engine").options(**engine_options(config))
    voices = serve.deployment(VoiceRegistry, name="Voices").options(**registry_options(config))
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress").options(**ingress_options(config))
    return ingress.bind(engine.bind(config), voices.bind(config), config)


def build(args: dict):
    """The application builder of `serve run runtimes.scale.app:build key=value ...` (the ScaleConfig fields:
    model, replicas, autoscale=MIN:MAX, threads, max_rows, max_queue, voices_dir, ...)."""
    return application(from_args(args))


__all__ = ["APP_NAME", "application", "build"]
