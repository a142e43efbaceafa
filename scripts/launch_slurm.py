"""Multi-node GPU launch under SLURM: one process per GPU (default) or per node, all running the same entry point.

Run inside an allocation (an sbatch script or salloc), e.g. 2 nodes x 8 GPUs:
    python scripts/launch_slurm.py -- python -m latent_pretraining.train --config=configs/vipra.py:7b \
        --workdir=/shared/runs/vipra_7b
    python scripts/launch_slurm.py --per node --dry-run -- python -m lam.train --config=configs/lam.py:vipra ...

It runs `srun` with one task per process; each task goes through scripts/launch_worker.py, which sets
JAX_PROCESS_ID from SLURM_PROCID (and CUDA_VISIBLE_DEVICES from SLURM_LOCALID per GPU), calls
`jax.distributed.initialize` and runs the module. Coordinator: the first host of SLURM_JOB_NODELIST, port
61440 + SLURM_JOB_ID % 4096 (JAX's own SLURM rule, so concurrent jobs on one node do not collide) unless --port.
`--dry-run` prints the srun line and every process's host, environment and command without running anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

from core.errors import UserError


def expand_nodelist(nodelist: str) -> list[str]:
    """'gpu[01-02,05],login1' -> ['gpu01', 'gpu02', 'gpu05', 'login1'] (zero padding kept)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            hosts += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi or lo) + 1)]
    return hosts


def gpus_per_node(env: dict[str, str]) -> int:
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS"):
        value = env.get(key, "")
        if key == "SLURM_JOB_GPUS" and value:
            return len(value.split(","))
        if value and re.search(r"(\d+)\s*$", value):  # '8' or 'h100:8'
            return int(re.search(r"(\d+)\s*$", value).group(1))
    raise UserError("cannot tell the GPUs per node: set --gpus-per-node or allocate with --gpus-per-node")


def plan(env: dict[str, str], per: str, gpus: int, port: int | None) -> tuple[list[str], list[tuple[str, dict]]]:
    """(srun args, [(host, environment of process i)]) for the allocation described by `env`."""
    if "SLURM_JOB_NODELIST" not in env or "SLURM_JOB_ID" not in env:
        raise UserError("not inside a SLURM allocation (SLURM_JOB_NODELIST / SLURM_JOB_ID unset): use sbatch/salloc")
    hosts = expand_nodelist(env["SLURM_JOB_NODELIST"])
    port = port or 61440 + int(env["SLURM_JOB_ID"]) % 4096
    per_node = gpus if per == "gpu" else 1
    n = len(hosts) * per_node
    common = {"JAX_COORDINATOR_ADDRESS": f"{hosts[0]}:{port}", "JAX_NUM_PROCESSES": str(n)}
    srun = ["srun", f"--nodes={len(hosts)}", f"--ntasks={n}", f"--ntasks-per-node={per_node}",
            "--kill-on-bad-exit=1", "--export=ALL," + ",".join(f"{k}={v}" for k, v in common.items())]
    procs = []
    for i in range(n):
        local = i % per_node
        devices = str(local) if per == "gpu" else ",".join(map(str, range(gpus)))
        procs.append((hosts[i // per_node], {**common, "JAX_PROCESS_ID": str(i), "SLURM_PROCID": str(i),
                                             "SLURM_LOCALID": str(local), "CUDA_VISIBLE_DEVICES": devices}))
    return srun, procs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise UserError("usage: launch_slurm.py [opts] -- python -m <module> [args...]")
    i = argv.index("--")
    p = argparse.ArgumentParser(prog="launch_slurm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--per", choices=("gpu", "node"), default="gpu", help="one process per GPU or per node")
    p.add_argument("--gpus-per-node", type=int, default=0, help="default: from SLURM_GPUS_ON_NODE / _PER_NODE")
    p.add_argument("--port", type=int, default=0, help="coordinator port (default 61440 + job id %% 4096)")
    p.add_argument("--dry-run", action="store_true", help="print the processes' hosts, env and commands only")
    a = p.parse_args(argv[:i])
    cmd = argv[i + 1:]
    env = dict(os.environ)
    gpus = a.gpus_per_node or gpus_per_node(env)
    srun, procs = plan(env, a.per, gpus, a.port or None)
    worker = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_worker.py")]
    full = srun + worker + (["--bind-local-gpu"] if a.per == "gpu" else []) + ["--"] + cmd
    if a.dry_run:
        print(f"# {len(procs)} processes on {len(procs) // (gpus if a.per == 'gpu' else 1)} nodes x "
              f"{gpus} GPUs ({a.per} mode)\n{shlex.join(full)}")
        for k, (host, penv) in enumerate(procs):
            envs = " ".join(f"{key}={shlex.quote(v)}" for key, v in penv.items())
            print(f"[process {k:>3}] host={shlex.quote(host)} {envs} {shlex.join(cmd)}")
        return 0
    return subprocess.call(full)


if __name__ == "__main__":
    from core import cli

    cli.run(main)
