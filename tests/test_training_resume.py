"""Exact resume (SIGKILL between checkpoints, SIGTERM), 2-process training on localhost, half-written checkpoints."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from training_utils import Data, config, init_fn, loss_fn

from latent_pretraining.training import checkpoint, loop, state

HERE = pathlib.Path(__file__).resolve().parent
WORKER = str(HERE / "training_worker.py")


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def _worker(*args: str, devices: int = 8) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, *args], env=_env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed (rc={proc.returncode}):\n{out[-4000:]}"
    return out


def _losses(path: pathlib.Path) -> dict[int, str]:
    """step -> loss (float.hex); a later line for the same step (a re-run after a kill) overrides the earlier one."""
    out = {}
    for line in path.read_text().splitlines():
        step, loss = line.split()
        out[int(step)] = loss
    return out


@pytest.mark.slow  # fast counterpart: test_training_preempt.py (the same kill/SIGTERM/resume sequence in process)
def test_exact_resume_after_sigkill_and_sigterm(tmp_path: pathlib.Path) -> None:
    # Reference: uninterrupted, in this process (same 8 CPU devices, same config and data).
    ref_losses: dict[int, str] = {}

    def record(step, st, metrics, logger):
        ref_losses[step] = float(metrics["loss"]).hex()

    ref = loop.run(config=config(), workdir=str(tmp_path / "ref"), init_fn=init_fn, loss_fn=loss_fn, data=Data(),
                   hooks=[record])

    run, out = tmp_path / "run", tmp_path / "out"
    # 1) killed with SIGKILL at step 8 (checkpoints at 5 and 10): must resume from 5.
    proc = _worker(str(run), str(out), "--pause_at", "8")
    for line in proc.stdout:
        if line.startswith("PAUSED"):
            break
    else:
        pytest.fail(f"worker ended before pausing: rc={proc.wait()}")
    deadline = time.monotonic() + 60  # let the async save of step 5 commit, then kill between checkpoints
    while not (run / "checkpoints" / "5").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.Checkpointer(str(run / "checkpoints")).latest_step() == 5

    # 2) resumed, then SIGTERM after step 12: saves a checkpoint at 12 and exits cleanly.
    text = _finish(_worker(str(run), str(out), "--resume", "--sigterm_at", "12"))
    assert "DONE step=12 interrupted=True" in text, text[-2000:]
    assert 12 in checkpoint.Checkpointer(str(run / "checkpoints")).all_steps()

    # 3) resumed again to the end.
    text = _finish(_worker(str(run), str(out), "--resume"))
    assert "DONE step=20 interrupted=False" in text, text[-2000:]

    got = np.load(str(out) + ".npz")
    want = {k: np.asarray(v) for k, v in state.flatten(ref.state.params).items()}
    assert sorted(got.files) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bitwise
    assert _losses(pathlib.Path(str(out) + ".losses")) == ref_losses


def test_half_written_checkpoint_is_ignored(tmp_path: pathlib.Path) -> None:
    cfg = config(total_steps=4, every=2)
    loop.run(config=cfg, workdir=str(tmp_path), init_fn=init_fn, loss_fn=loss_fn, data=Data())
    ckdir = tmp_path / "checkpoints"
    # What a run killed in the middle of saving step 6 leaves behind: orbax's temporary directory.
    shutil.copytree(ckdir / "4", ckdir / "6.orbax-checkpoint-tmp-1234")
    (ckdir / "6.orbax-checkpoint-tmp-1234" / "params" / "junk").write_bytes(b"\x00" * 10)
    cfg.total_steps = 6
    data = Data()
    res = loop.run(config=cfg, workdir=str(tmp_path), init_fn=init_fn, loss_fn=loss_fn, data=data, resume=True)
    assert res.step == 6
    assert data.index == 6  # resumed from 4 (data state index 4) and trained 2 steps, not from the broken "6"
    assert sorted(p.name for p in ckdir.iterdir()) == ["2", "4", "6"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost(tmp_path: pathlib.Path) -> None:
    """2 processes x 4 CPU devices, one global 8-device mesh; each feeds half the batch; save + restore."""
    coord = f"127.0.0.1:{_free_port()}"
    procs = [
        _worker(str(tmp_path / "run"), str(tmp_path / "out"), "--total", "6", "--coordinator", coord,
                "--num_processes", "2", "--process_id", str(i), devices=4)
        for i in range(2)
    ]
    outs = [_finish(p, timeout=150) for p in procs]
    for text in outs:
        assert "RESTORE OK step=6" in text, text[-3000:]
        assert "DONE step=6 interrupted=False" in text
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["5", "6"]

    # Same result as one process with 8 devices on the same global batches (up to all-reduce order).
    ref = loop.run(config=config(total_steps=6), workdir=str(tmp_path / "ref"), init_fn=init_fn, loss_fn=loss_fn,
                   data=Data())
    got = np.load(str(tmp_path / "out") + ".npz")
    for k, v in state.flatten(ref.state.params).items():
        np.testing.assert_allclose(got[k], np.asarray(jax.device_get(v)), rtol=1e-5, atol=1e-6, err_msg=k)
