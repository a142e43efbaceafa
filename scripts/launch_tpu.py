"""Cloud TPU VM pod launch: the same command on every worker over `gcloud compute tpus tpu-vm ssh --worker=all`.

    python scripts/launch_tpu.py --tpu my-v4-32 --zone us-central2-b -- \
        python -m latent_pretraining.train --config=configs/lapa.py:7b --workdir=gs://my-bucket/runs/lapa_7b
    python scripts/launch_tpu.py --tpu my-v4-32 --zone us-central2-b --accelerator v4-32 --dry-run -- \
        python -m lam.train --config=configs/lam.py:lapa --workdir=gs://my-bucket/runs/lam_lapa

Every worker runs scripts/launch_worker.py --auto, which calls `jax.distributed.initialize()` without arguments: JAX
reads the coordinator (worker 0's address, port 8482), the process count and this worker's id from the TPU metadata
server. The repository (and its .venv) must exist at --repo-dir on every worker, and the workdir must be shared
(gs://...). `--dry-run` prints the gcloud line and each worker's command and environment (the worker count comes from
--accelerator, e.g. v4-32 = 4 hosts x 4 chips) without running anything.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

from core.errors import UserError

# generation -> (how the name counts: "cores" or "chips", per host, JAX devices per host)
GENERATIONS = {"v2": ("cores", 8, 8), "v3": ("cores", 8, 8), "v4": ("cores", 8, 4), "v5p": ("cores", 8, 4),
               "v5litepod": ("chips", 4, 4), "v5e": ("chips", 4, 4), "v6e": ("chips", 4, 4)}
COORDINATOR_PORT = 8482  # jax/_src/clusters/cloud_tpu_cluster.py


def topology(accelerator: str) -> tuple[int, int]:
    """'v4-32' -> (4 workers, 4 devices per worker)."""
    gen, _, size = accelerator.partition("-")
    if gen not in GENERATIONS or not size.isdigit():
        raise UserError(f"unknown accelerator type {accelerator!r}; expected e.g. v4-32 ({', '.join(GENERATIONS)})")
    unit, per_host, devices = GENERATIONS[gen]
    n = int(size)
    if unit == "chips" and n <= 8:  # single-host v5e / v6e slices hold up to 8 chips
        return 1, n
    return max(1, n // per_host), devices if n >= per_host else n * devices // per_host


def shell_path(path: str) -> str:
    """`path` as one shell word; a leading `~/` stays unquoted so the remote shell still expands it."""
    if path == "~":
        return path
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def shell_assignment(entry: str) -> str:
    """'KEY=VALUE' as a shell assignment with the value quoted (quoting the whole word would make it a command)."""
    key, sep, value = entry.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise UserError(f"bad --env {entry!r}: expected KEY=VALUE with KEY a shell variable name")
    return f"{key}={shlex.quote(value)}"


def remote_command(cmd: list[str], repo_dir: str, python: str, env: list[str]) -> str:
    """The shell line every worker runs; every value in it is quoted (a --repo-dir or argument is never code)."""
    worker = [python, "scripts/launch_worker.py", "--auto", "--", *cmd]
    return f"cd {shell_path(repo_dir)} && " + " ".join([*map(shell_assignment, env), shlex.join(worker)])


def gcloud_command(a: argparse.Namespace, remote: str) -> list[str]:
    out = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.tpu, f"--zone={a.zone}", "--worker=all",
           f"--command={remote}"]
    return out + ([f"--project={a.project}"] if a.project else [])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise UserError("usage: launch_tpu.py --tpu NAME --zone ZONE [opts] -- python -m <module> [args...]")
    i = argv.index("--")
    p = argparse.ArgumentParser(prog="launch_tpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--tpu", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--repo-dir", default="~/latent-vla", help="checkout of this repository on every worker")
    p.add_argument("--python", default=".venv/bin/python", help="interpreter on the workers (relative to repo-dir)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeatable)")
    p.add_argument("--accelerator", default="", help="e.g. v4-32: sizes the --dry-run listing")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv[:i])
    cmd = argv[i + 1:]
    remote = remote_command(cmd, a.repo_dir, a.python, a.env)
    full = gcloud_command(a, remote)
    if not a.dry_run:
        return subprocess.call(full)
    print(shlex.join(full))
    if a.accelerator:
        workers, devices = topology(a.accelerator)
        print(f"# {a.accelerator}: {workers} workers x {devices} devices = {workers * devices} JAX devices; the same "
              "command on each, process id and coordinator from the TPU metadata")
        for w in range(workers):
            env = {"TPU_WORKER_ID": str(w), "JAX_PROCESS_ID": f"{w} (metadata agent-worker-number)",
                   "JAX_NUM_PROCESSES": str(workers),
                   "JAX_COORDINATOR_ADDRESS": f"<worker 0 internal IP>:{COORDINATOR_PORT} (metadata)",
                   "LOCAL_DEVICES": str(devices)}
            print(f"[worker {w:>2}] " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" :: {remote}")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
