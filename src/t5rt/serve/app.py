"""`t5rt.serve.deployment(DIR, ...)`: the Ray Serve application (ingress -> model replicas).

    app = t5rt.serve.deployment("exp/", replicas=2)        # ray.serve Application
    serve.run(app, name="t5rt", route_prefix="/")          # or compose it into your own app

Replica placement (one GPU each, or an equal share of the CPUs) is planned from the cluster Ray
is connected to (placement.py); call ray.init(...) first to choose the cluster, else the
deployment connects as serve.run would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from . import placement as placement_mod

MODEL_DEPLOYMENT = "T5Model"
INGRESS_DEPLOYMENT = "T5Ingress"


@dataclass
class ServeOptions:
    """How the application runs (HTTP host/port and the cluster address are the CLI's business)."""

    replicas: int = 1                        # fixed replica count (without autoscaling)
    min_replicas: int | None = None          # autoscaling: set max_replicas (and these) to enable
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None  # autoscaling target per replica (Ray's default: 2)
    device: str = "auto"                     # "auto" | "cpu" | "cuda" (auto: cuda where the cluster has GPUs)
    backend: str = "auto"                    # the runtime's backend
    warmup: bool = True                      # each replica runs Runtime.warmup() before it takes traffic
    threads: int | None = None               # CPU: intra-op threads per replica (None: from placement)
    replica_cpus: float | None = None        # CPU reservation per replica (None: equal share, placement.py)
    max_ongoing_requests: int = 64           # per replica, before Ray queues at the handle
    max_queued_requests: int = 1024          # at each handle, before 503 + Retry-After (-1: no limit)
    max_queue: int | None = None             # the runtime's own queue (RuntimeOptions.max_queue)
    api_key: str | None = None               # required as 'Authorization: Bearer KEY' when set
    retry_window_s: float = 60.0             # how long a request whose replica died is re-sent
    runtime_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # more RuntimeOptions

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    def validate(self) -> None:
        def positive_int(name: str, v: Any, least: int = 1) -> None:
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise InvalidOptionError(f"{name}={v!r} is invalid: must be an integer >= {least}")

        positive_int("replicas", self.replicas)
        positive_int("max_ongoing_requests", self.max_ongoing_requests)
        if self.max_queued_requests != -1:
            positive_int("max_queued_requests", self.max_queued_requests)
        if self.autoscaling:
            positive_int("max_replicas", self.max_replicas)
            lo = self.min_replicas if self.min_replicas is not None else 1
            positive_int("min_replicas", lo, least=0)
            if lo > self.max_replicas:
                raise InvalidOptionError(f"min_replicas={lo} exceeds max_replicas={self.max_replicas}")
        elif self.min_replicas is not None or self.target_ongoing_requests is not None:
            raise InvalidOptionError("min_replicas / target_ongoing_requests need max_replicas (autoscaling)")
        if self.target_ongoing_requests is not None and not self.target_ongoing_requests > 0:
            raise InvalidOptionError(f"target_ongoing_requests={self.target_ongoing_requests!r} must be > 0")
        if not self.retry_window_s > 0:
            raise InvalidOptionError(f"retry_window_s={self.retry_window_s!r} must be > 0")


def _nodes() -> list[dict[str, float]]:
    import ray

    if not ray.is_initialized():
        ray.init()
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def plan_replicas(options: ServeOptions, fixed_cluster: bool = False) -> placement_mod.Placement:
    """Placement of the model replicas on the cluster Ray is connected to."""
    return placement_mod.plan(options.device, options.most_replicas, _nodes(), replica_cpus=options.replica_cpus,
                              threads=options.threads, fixed_cluster=fixed_cluster)


def deployment(directory: str | Path, options: ServeOptions | None = None, *,
               placement: placement_mod.Placement | None = None, **kwargs: Any) -> Any:
    """The t5rt application for Ray Serve: an HTTP ingress and the model replicas of `directory`.

    kwargs override ServeOptions fields (replicas=2, device="cpu", api_key=..., ...)."""
    from ray import serve

    from ..manifest import load_manifest
    from .ingress import Ingress
    from .replica import T5Replica

    opts = dataclasses.replace(options or ServeOptions(), **kwargs)
    opts.validate()
    directory = str(Path(directory).resolve())
    load_manifest(directory)  # not an export: fail here, not in every replica
    place = placement or plan_replicas(opts)
    runtime = dict(opts.runtime_options)
    runtime.update(device=place.device, backend=opts.backend, warmup=opts.warmup)
    if place.threads is not None:
        runtime["threads"] = place.threads
    if opts.max_queue is not None:
        runtime["max_queue"] = opts.max_queue
    scale: dict[str, Any]
    if opts.autoscaling:
        auto: dict[str, Any] = {"min_replicas": opts.min_replicas if opts.min_replicas is not None else 1,
                                "max_replicas": opts.max_replicas}
        if opts.target_ongoing_requests is not None:
            auto["target_ongoing_requests"] = opts.target_ongoing_requests
        scale = {"autoscaling_config": auto}
    else:
        scale = {"num_replicas": opts.replicas}
    model = serve.deployment(T5Replica, name=MODEL_DEPLOYMENT, ray_actor_options=place.ray_actor_options(),
                             max_ongoing_requests=opts.max_ongoing_requests,
                             max_queued_requests=opts.max_queued_requests, **scale)
    # The ingress only parses and forwards: no CPU reserved, many requests at once.
    ingress = serve.deployment(Ingress, name=INGRESS_DEPLOYMENT, num_replicas=1,
                               ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
    return ingress.bind(model.bind(directory, runtime), api_key=opts.api_key, retry_window_s=opts.retry_window_s)
