"""Multi-host setup: `jax.distributed.initialize` from config or environment, per-process data slices, host->global.

`initialize(config)` must run before anything touches a JAX device. Sources, in order:

1. explicit config: `coordinator_address` ("host:port"), `num_processes`, `process_id` (and `local_device_ids`);
2. environment: `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID`;
3. a cluster JAX detects itself: SLURM with more than one task (`SLURM_NTASKS`), TPU pod slices
   (`TPU_WORKER_HOSTNAMES` with several hosts), or `config.auto=True` (e.g. GKE/K8s/MPI);
4. otherwise: a single process, nothing to do.

Each process feeds only its slice of the global batch (`process_batch_size`); `to_global` assembles the global
`jax.Array` with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Sharding

PyTree = Any


def default_config() -> ml_collections.ConfigDict:
    """The `distributed` section of a training config (all empty = detect from the environment)."""
    c = ml_collections.ConfigDict()
    c.coordinator_address = ""
    c.num_processes = 0
    c.process_id = -1
    c.local_device_ids = ()
    c.auto = False
    c.initialization_timeout = 300
    return c


def _env_cluster() -> str:
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "slurm"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1:
        return "tpu"
    return ""


def initialize(config: ml_collections.ConfigDict | None = None) -> bool:
    """Initializes multi-process JAX if configured or detected. Returns True if it did."""
    c = config or default_config()
    kwargs: dict[str, Any] = {"initialization_timeout": int(c.get("initialization_timeout", 300))}
    if c.get("local_device_ids"):
        kwargs["local_device_ids"] = list(c.local_device_ids)
    if c.get("coordinator_address"):
        if c.num_processes <= 0 or c.process_id < 0:
            raise ValueError(
                f"distributed.coordinator_address={c.coordinator_address!r} also needs num_processes (> 0) and "
                f"process_id (>= 0); got {c.num_processes} and {c.process_id}"
            )
        kwargs.update(coordinator_address=c.coordinator_address, num_processes=int(c.num_processes),
                      process_id=int(c.process_id))
        source = "config"
    elif _env_cluster() == "env":
        kwargs.update(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
        source = "environment"
    elif _env_cluster() or c.get("auto"):
        source = _env_cluster() or "auto-detect"
    else:
        return False
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed initialized from %s: process %d of %d, %d local / %d global devices", source,
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_main() -> bool:
    """True on the process that logs and writes bookkeeping files."""
    return jax.process_index() == 0


def process_batch_size(global_batch_size: int) -> int:
    """Rows of the global batch this process loads (the global batch is split evenly over processes)."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {n} processes")
    return global_batch_size // n


def to_global(batch: PyTree, shardings: Sharding | PyTree) -> PyTree:
    """Host-local numpy batch (this process's rows) -> global jax.Arrays with `shardings`.

    jax.Arrays that already have the wanted sharding pass through; others are resharded. Non-numeric leaves (e.g.
    raw text) are an error: tokenize or drop them first (`loop.run(batch_fn=...)`).
    """
    if isinstance(shardings, Sharding):
        shardings = jax.tree.map(lambda _: shardings, batch)

    def one(path, x, s):
        if isinstance(x, jax.Array):
            return x if x.sharding.is_equivalent_to(s, x.ndim) else jax.device_put(x, s)
        x = np.asarray(x)
        if x.dtype.kind not in "biufc":
            raise TypeError(
                f"batch field {jax.tree_util.keystr(path)} has non-numeric dtype {x.dtype} (shape {x.shape}); "
                "convert or drop it on the host before the step (loop.run(batch_fn=...))"
            )
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(s, x, global_shape)

    return jax.tree_util.tree_map_with_path(one, batch, shardings)


def any_process(flag: bool) -> bool:
    """True if `flag` is True on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
