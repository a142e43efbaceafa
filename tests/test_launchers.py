"""Multi-host launchers in dry-run mode: a 2-node x 8-GPU SLURM allocation (fake SLURM variables) and a v4-32 TPU pod
(4 workers); nothing is launched."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess

import pytest

from core.errors import UserError

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"
TRAIN = ["python", "-m", "latent_pretraining.train", "--config=configs/vipra.py:7b", "--workdir=/shared/runs/v7b"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def slurm_env(monkeypatch):
    for k, v in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_GPUS_ON_NODE": "8",
                 "SLURM_NNODES": "2"}.items():
        monkeypatch.setenv(k, v)


def _processes(out: str) -> list[dict[str, str]]:
    rows = []
    for line in out.splitlines():
        if line.startswith("[process"):
            fields = shlex.split(line.split("]", 1)[1])
            rows.append({k: v for k, _, v in (f.partition("=") for f in fields if re.match(r"^[A-Za-z_]+=", f))})
            rows[-1]["cmd"] = line
    return rows


def test_slurm_dry_run_one_process_per_gpu(slurm_env, capsys) -> None:
    launch = _load("launch_slurm")
    assert launch.main(["--dry-run", "--", *TRAIN]) == 0
    out = capsys.readouterr().out
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    assert "--nodes=2" in srun and "--ntasks=16" in srun and "--ntasks-per-node=8" in srun
    assert "launch_worker.py --bind-local-gpu -- python -m latent_pretraining.train" in srun
    procs = _processes(out)
    assert len(procs) == 16
    port = 61440 + 4242 % 4096
    assert {p["JAX_COORDINATOR_ADDRESS"] for p in procs} == {f"gpu07:{port}"}
    assert [p["JAX_PROCESS_ID"] for p in procs] == [str(i) for i in range(16)]
    assert [p["host"] for p in procs] == ["gpu07"] * 8 + ["gpu08"] * 8
    assert [p["CUDA_VISIBLE_DEVICES"] for p in procs] == [str(i % 8) for i in range(16)]
    assert all(p["JAX_NUM_PROCESSES"] == "16" and p["cmd"].endswith(shlex.join(TRAIN)) for p in procs)


def test_slurm_dry_run_one_process_per_node(slurm_env, capsys) -> None:
    launch = _load("launch_slurm")
    cmd = ["python", "-m", "lam.train", "--config=configs/lam.py:vipra", "--workdir=/shared/runs/lam"]
    assert launch.main(["--per", "node", "--port", "5000", "--dry-run", "--", *cmd]) == 0
    procs = _processes(capsys.readouterr().out)
    assert [(p["host"], p["JAX_PROCESS_ID"]) for p in procs] == [("gpu07", "0"), ("gpu08", "1")]
    assert all(p["JAX_COORDINATOR_ADDRESS"] == "gpu07:5000" and p["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
               for p in procs)


def test_slurm_nodelist_and_errors(monkeypatch) -> None:
    launch = _load("launch_slurm")
    assert launch.expand_nodelist("gpu[01-03,10],login7") == ["gpu01", "gpu02", "gpu03", "gpu10", "login7"]
    assert launch.gpus_per_node({"SLURM_GPUS_PER_NODE": "h100:8"}) == 8
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    with pytest.raises(UserError, match="not inside a SLURM allocation"):
        launch.main(["--gpus-per-node", "8", "--dry-run", "--", *TRAIN])


def test_tpu_dry_run_v4_32(capsys) -> None:
    launch = _load("launch_tpu")
    args = ["--tpu", "pod", "--zone", "us-central2-b", "--accelerator", "v4-32", "--dry-run", "--", *TRAIN]
    assert launch.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    gcloud = shlex.split(lines[0])
    assert gcloud[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in gcloud
    remote = next(a for a in gcloud if a.startswith("--command=")).split("=", 1)[1]
    assert "scripts/launch_worker.py --auto -- " + shlex.join(TRAIN) in remote
    workers = [line for line in lines if line.startswith("[worker")]
    assert len(workers) == 4 and all(line.endswith(remote) for line in workers)
    assert "4 workers x 4 devices = 16 JAX devices" in lines[1]
    assert launch.topology("v5litepod-8") == (1, 8) and launch.topology("v3-8") == (1, 8)


def test_worker_shim_env_and_command() -> None:
    worker = _load("launch_worker")
    opts, module, args = worker.split_command(["--auto", "--", *TRAIN])
    assert (opts, module, args) == (["--auto"], "latent_pretraining.train", TRAIN[3:])
    env = {"JAX_COORDINATOR_ADDRESS": "gpu07:5000", "SLURM_PROCID": "11", "SLURM_LOCALID": "3"}
    assert worker.worker_env(env, bind_local_gpu=True) == {"JAX_PROCESS_ID": "11", "CUDA_VISIBLE_DEVICES": "3"}
    with pytest.raises(UserError, match="python -m"):
        worker.split_command(["--", "bash", "run.sh"])


HOSTILE_DIR = "my repo;touch PWNED"  # a space and a shell command separator in one --repo-dir


def _fake_checkout(root: pathlib.Path) -> pathlib.Path:
    """A checkout whose `.venv/bin/python` is a shell script printing its env var MSG, cwd and argv, one per line."""
    repo = root / HOSTILE_DIR
    (repo / ".venv" / "bin").mkdir(parents=True)
    fake = repo / ".venv" / "bin" / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "MSG=$MSG" "PWD=$(pwd)" "$@"\n')
    fake.chmod(0o755)
    return repo


def _run_remote(remote: str, cwd: pathlib.Path, home: pathlib.Path) -> subprocess.CompletedProcess:
    """Run the worker's shell line locally with bash (only the fake interpreter above gets executed)."""
    return subprocess.run(["bash", "-c", remote], cwd=cwd, env={"PATH": os.environ["PATH"], "HOME": str(home)},
                          capture_output=True, text=True, timeout=30)


def test_tpu_remote_command_quotes_every_value(tmp_path, capsys) -> None:
    launch = _load("launch_tpu")
    repo = _fake_checkout(tmp_path)
    cmd = ["python", "-m", "lam.train", "--workdir=gs://b/run $(touch PWNED2)", "--note=a;b && c"]
    args = ["--tpu", "pod", "--zone", "z", "--repo-dir", str(repo), "--env", "MSG=hello world;touch PWNED3",
            "--dry-run", "--", *cmd]
    assert launch.main(args) == 0
    gcloud = shlex.split(capsys.readouterr().out.splitlines()[0])
    remote = next(a for a in gcloud if a.startswith("--command=")).split("=", 1)[1]
    # as the remote shell parses it: one `cd <dir>`, one `&&`, no `;` or command substitution anywhere
    tokens = list(shlex.shlex(remote, posix=True, punctuation_chars=True))
    assert tokens[:3] == ["cd", str(repo), "&&"] and tokens.count("&&") == 1 and ";" not in tokens
    out = _run_remote(remote, tmp_path, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["MSG=hello world;touch PWNED3", f"PWD={repo}"]
    assert lines[2:] == ["scripts/launch_worker.py", "--auto", "--", *cmd]
    assert not list(tmp_path.rglob("PWNED*"))


def test_tpu_repo_dir_home_relative_still_expands(tmp_path) -> None:
    launch = _load("launch_tpu")
    _fake_checkout(tmp_path)
    remote = launch.remote_command(["python", "-m", "lam.train"], f"~/{HOSTILE_DIR}", ".venv/bin/python", [])
    assert remote.startswith("~/", len("cd "))  # the tilde stays outside the quotes
    elsewhere = tmp_path / "elsewhere"  # start outside the checkout; a broken quote would `touch` in tmp_path
    elsewhere.mkdir()
    out = _run_remote(remote, elsewhere, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == f"PWD={tmp_path / HOSTILE_DIR}" and not list(tmp_path.rglob("PWNED*"))


def test_tpu_bad_env_entry_is_one_line_error() -> None:
    launch = _load("launch_tpu")
    for entry in ["NOVALUE", "BAD KEY=1", "X;rm -rf x=1"]:
        with pytest.raises(UserError, match="expected KEY=VALUE"):
            launch.remote_command(["python", "-m", "lam.train"], "/r", "python", [entry])


def test_slurm_dry_run_lines_parse_back(monkeypatch, capsys) -> None:
    launch = _load("launch_slurm")
    for k, v in {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "bad host;touch x", "SLURM_GPUS_ON_NODE": "1"}.items():
        monkeypatch.setenv(k, v)
    cmd = ["python", "-m", "lam.train", "--workdir=/runs/a b;touch x"]
    assert launch.main(["--dry-run", "--", *cmd]) == 0
    lines = capsys.readouterr().out.splitlines()
    srun = shlex.split(next(line for line in lines if line.startswith("srun ")))
    assert srun[-len(cmd):] == cmd
    proc = shlex.split(next(line for line in lines if line.startswith("[process")).split("]", 1)[1])
    assert proc[0] == "host=bad host;touch x" and proc[-len(cmd):] == cmd
