"""Where replicas go: what each reserves from Ray and how many threads it runs (pure; no Ray).

    GPU   one replica per GPU (num_gpus=1); more replicas than the cluster's GPUs is an error
          on a fixed cluster (a local one), a warning on one that may grow (--address).
    CPU   every replica reserves the same share of CPUs, the largest share with which all of
          them fit the nodes' CPUs (2 replicas on a 2-core machine: 1 CPU and 1 thread each);
          a replica runs as many intra-op threads as it reserved whole CPUs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InvalidOptionError

EPS = 1e-9
MIN_CPU_SHARE = 0.01  # Ray keeps 4 decimals of a resource; below 1% a replica is pointless


@dataclass(frozen=True)
class Placement:
    device: str            # "cpu" | "cuda": what each replica loads the runtime on
    num_cpus: float        # Ray CPU reservation per replica
    num_gpus: float        # Ray GPU reservation per replica (1 on cuda)
    threads: int | None    # CPU: intra-op threads per replica (None: the backend's default)
    note: str = ""         # a warning to print (placement that may not fit), else ""

    def ray_actor_options(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def fits(share: float, node_cpus: Sequence[float], replicas: int) -> bool:
    """Do `replicas` replicas of `share` CPUs each fit on nodes with these CPU counts?"""
    return sum(math.floor(c / share + EPS) for c in node_cpus) >= replicas


def cpu_share(node_cpus: Sequence[float], replicas: int) -> float:
    """The largest equal CPU share per replica with which `replicas` replicas fit on the nodes.

    Only a node's CPUs divided by a whole number can be that share (a larger one would leave the
    same count per node), so the candidates are c / k; at least MIN_CPU_SHARE."""
    candidates = sorted({c / k for c in node_cpus if c > 0 for k in range(1, replicas + 1)}, reverse=True)
    for share in candidates:
        share = math.floor(share * 1e4) / 1e4  # Ray's resource precision, rounded down
        if share >= MIN_CPU_SHARE and fits(share, node_cpus, replicas):
            return share
    return MIN_CPU_SHARE


def plan(device: str, replicas: int, nodes: Sequence[Mapping[str, float]], *, replica_cpus: float | None = None,
         threads: int | None = None, fixed_cluster: bool = True) -> Placement:
    """Placement of `replicas` replicas (the most autoscaling may start) on `nodes` (each node's
    Ray resources, e.g. {"CPU": 2.0, "GPU": 0.0}). fixed_cluster: nothing will join later, so a
    placement that cannot fit is an error rather than a warning."""
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidOptionError(f"device={device!r} is invalid: use 'auto', 'cpu' or 'cuda'")
    if replicas < 1:
        raise InvalidOptionError(f"replicas={replicas} is invalid: must be >= 1")
    if replica_cpus is not None and not replica_cpus > 0:
        raise InvalidOptionError(f"replica_cpus={replica_cpus!r} is invalid: must be > 0")
    gpus = [float(n.get("GPU", 0)) for n in nodes]
    cpus = [float(n.get("CPU", 0)) for n in nodes]
    if device == "auto":
        device = "cuda" if sum(gpus) >= 1 else "cpu"
    if device == "cuda":
        note = ""
        if sum(gpus) < replicas:
            msg = (f"{replicas} GPU replica(s) asked but the cluster has {int(sum(gpus))} GPU(s); "
                   f"each replica takes one GPU")
            if fixed_cluster:
                raise InvalidOptionError(f"{msg}: use --replicas {max(int(sum(gpus)), 1)} or --device cpu")
            note = f"{msg}: the rest wait until GPUs join the cluster"
        # a little CPU for the replica's host work where every GPU node has a CPU per GPU
        gpu_nodes = [(c, g) for c, g in zip(cpus, gpus) if g > 0]
        share = 1.0 if gpu_nodes and all(c >= g for c, g in gpu_nodes) else 0.0
        if replica_cpus is not None:
            share = replica_cpus
        return Placement("cuda", share, 1.0, threads, note)
    note = ""
    if replica_cpus is not None:
        share = replica_cpus
        if not fits(share, cpus, replicas):
            msg = f"{replicas} replica(s) of {share:g} CPUs do not fit the cluster's CPUs {cpus}"
            if fixed_cluster:
                raise InvalidOptionError(f"{msg}: lower --replica-cpus or --replicas")
            note = f"{msg}: the rest wait until nodes join the cluster"
    elif not cpus or sum(cpus) <= 0:
        raise InvalidOptionError("the Ray cluster has no CPUs to place replicas on")
    else:
        share = cpu_share(cpus, replicas)
        if share < 1:
            note = (f"{replicas} replicas on {sum(cpus):g} CPUs: each reserves {share:g} CPU and runs "
                    f"1 thread (more replicas than cores only adds contention)")
    return Placement("cpu", share, 0.0, threads if threads is not None else max(1, int(share + EPS)), note)
