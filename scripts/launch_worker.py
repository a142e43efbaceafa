"""Per-process shim of the multi-host launchers (launch_slurm.py, launch_tpu.py): initialize JAX's multi-controller
runtime, then run a `python -m <module> ...` entry point in this same process (so every trainer works unchanged).

    python scripts/launch_worker.py [--auto] [--bind-local-gpu] -- python -m latent_pretraining.train --config=...

Coordinator, in the order of latent_pretraining/training/distributed.py: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
JAX_PROCESS_ID (JAX_PROCESS_ID defaults to SLURM_PROCID under srun); else, with --auto, JAX detects the cluster
itself (TPU pod metadata: worker 0, port 8482; SLURM variables). --bind-local-gpu sets CUDA_VISIBLE_DEVICES to
SLURM_LOCALID (one process per GPU).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from core.errors import UserError


def split_command(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """argv = [opts..., '--', 'python', '-m', module, args...] -> (opts, module, args)."""
    if "--" not in argv:
        raise UserError("usage: launch_worker.py [opts] -- python -m <module> [args...]")
    i = argv.index("--")
    cmd = argv[i + 1:]
    if len(cmd) < 3 or cmd[1] != "-m" or "python" not in os.path.basename(cmd[0]):
        raise UserError(f"expected `python -m <module> [args...]` after --, got {' '.join(cmd)!r}")
    return argv[:i], cmd[2], cmd[3:]


def worker_env(environ: dict[str, str], bind_local_gpu: bool) -> dict[str, str]:
    """The variables this process adds: JAX_PROCESS_ID from SLURM_PROCID, CUDA_VISIBLE_DEVICES from SLURM_LOCALID."""
    out = {}
    if "JAX_COORDINATOR_ADDRESS" in environ and "JAX_PROCESS_ID" not in environ and "SLURM_PROCID" in environ:
        out["JAX_PROCESS_ID"] = environ["SLURM_PROCID"]
    if bind_local_gpu and "SLURM_LOCALID" in environ:
        out["CUDA_VISIBLE_DEVICES"] = environ["SLURM_LOCALID"]
    return out


def main(argv: list[str] | None = None) -> int:
    opts, module, args = split_command(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(prog="launch_worker.py")
    p.add_argument("--auto", action="store_true", help="let JAX detect the cluster (TPU pods, SLURM)")
    p.add_argument("--bind-local-gpu", action="store_true", help="CUDA_VISIBLE_DEVICES=$SLURM_LOCALID")
    a = p.parse_args(opts)
    os.environ.update(worker_env(dict(os.environ), a.bind_local_gpu))

    from latent_pretraining.training import distributed

    config = distributed.default_config()
    config.auto = a.auto
    distributed.initialize(config)  # before anything touches a device
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
