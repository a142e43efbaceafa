"""Multi-host launchers in dry-run mode: a 2-node x 8-GPU SLURM allocation (fake SLURM variables) and a v4-32 TPU pod
(4 workers); nothing is launched."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex

import pytest

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
    with pytest.raises(SystemExit, match="not inside a SLURM allocation"):
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
    with pytest.raises(SystemExit, match="python -m"):
        worker.split_command(["--", "bash", "run.sh"])
