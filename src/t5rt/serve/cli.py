"""`t5rt serve DIR`: the export behind HTTP on Ray Serve, until Ctrl-C / SIGTERM.

    t5rt serve exp/ --replicas 2                          # a local Ray instance, one machine
    t5rt serve exp/ --address auto --replicas 8           # join a running cluster (ray start ...)

Without --address a local Ray instance is started (and stopped on exit); with one, the
application is deployed on that cluster and deleted from it on exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..errors import InvalidOptionError, MissingDependencyError, T5rtError

APP_NAME = "t5rt"


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="directory written by 't5rt export'")
    http = p.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; "
                      "0.0.0.0 for every interface)")
    http.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    http.add_argument("--api-key", metavar="KEY", default=None,
                      help="require 'Authorization: Bearer KEY' on every request (default: $T5RT_API_KEY)")
    cl = p.add_argument_group("cluster")
    cl.add_argument("--address", metavar="RAY_ADDRESS", default=None,
                    help="join this Ray cluster ('auto': the one started on this node by 'ray start'); "
                         "default: start a local Ray instance")
    cl.add_argument("--replicas", type=int, default=1, metavar="N", help="model replicas (default %(default)s)")
    cl.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: one GPU per replica where the cluster has GPUs, else CPU")
    cl.add_argument("--replica-cpus", type=float, metavar="C", default=None,
                    help="CPUs reserved per replica (default: an equal share so all replicas fit)")
    cl.add_argument("--min-replicas", type=int, metavar="N", default=None, help="autoscaling: fewest replicas")
    cl.add_argument("--max-replicas", type=int, metavar="N", default=None,
                    help="autoscaling: most replicas (enables autoscaling; --replicas is then ignored)")
    cl.add_argument("--target-ongoing-requests", type=float, metavar="R", default=None,
                    help="autoscaling: requests in flight per replica to aim for")
    rt = p.add_argument_group("runtime (each replica)")
    rt.add_argument("--backend", choices=("auto", "ort", "trt", "native"), default="auto", help="inference backend")
    rt.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="make every shape a request can need before the replica takes traffic "
                         "(Runtime.warmup; on by default)")
    rt.add_argument("--threads", type=int, metavar="N", default=None, help="CPU: intra-op threads per replica")
    rt.add_argument("--max-queue", type=int, metavar="N", default=None,
                    help="requests a replica's runtime queues before refusing (429)")
    rt.add_argument("--max-ongoing-requests", type=int, metavar="N", default=64,
                    help="requests in flight per replica (default %(default)s)")
    rt.add_argument("--max-queued-requests", type=int, metavar="N", default=1024,
                    help="requests waiting for a replica before 503 (default %(default)s; -1: no limit)")


def options_from_args(args: argparse.Namespace) -> Any:
    import os

    from .app import ServeOptions

    opts = ServeOptions(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                        target_ongoing_requests=args.target_ongoing_requests, device=args.device,
                        backend=args.backend, warmup=args.warmup, threads=args.threads,
                        replica_cpus=args.replica_cpus,
                        max_ongoing_requests=args.max_ongoing_requests,
                        max_queued_requests=args.max_queued_requests, max_queue=args.max_queue,
                        api_key=args.api_key or os.environ.get("T5RT_API_KEY") or None)
    opts.validate()
    if not 0 < args.port < 65536:
        raise InvalidOptionError(f"--port {args.port} is invalid: use 1-65535")
    return opts


def _import_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("t5rt serve", "serve", e.name or "ray") from None


def run_cli(args: argparse.Namespace) -> int:
    from ..manifest import load_manifest

    opts = options_from_args(args)
    load_manifest(args.dir)  # a bad DIR fails before Ray starts
    _import_ray()
    import ray
    from ray import serve

    from .app import deployment, plan_replicas

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    local = args.address is None
    _say("starting a local Ray instance" if local else f"joining the Ray cluster at {args.address}")
    if local:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    else:
        try:
            ray.init(address=args.address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise T5rtError(f"could not join the Ray cluster at {args.address} ({' '.join(str(e).split())[:300]}); "
                            "is it running ('ray start --head'), and is its auth token here "
                            "(~/.ray/auth_token or RAY_AUTH_TOKEN)?") from None
    # after ray.init, which installs its own SIGTERM handler (exit without cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        place = plan_replicas(opts, fixed_cluster=local)
        if place.note:
            _say(f"warning: {place.note}")
        _say(f"{opts.most_replicas} replica(s) on {place.device}: {place.num_cpus:g} CPU, {place.num_gpus:g} GPU"
             + (f", {place.threads} thread(s)" if place.threads else "") + " each")
        serve.start(http_options={"host": args.host, "port": args.port})
        app = deployment(args.dir, opts, placement=place)
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as e:  # noqa: BLE001 - Ray's deploy failure: say it in one line
            raise T5rtError(f"the application did not start: {' '.join(str(e).split())[:2000]}") from None
        _say(f"serving {args.dir} at http://{args.host}:{args.port} (POST /v1/generate, /v1/generate/stream; "
             "GET /healthz, /metrics); Ctrl-C stops")
        while not stop.wait(0.5):
            pass
        _say("stopping")
    finally:
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    return 0


def _say(msg: str) -> None:
    print(f"t5rt serve: {msg}", file=sys.stderr, flush=True)
