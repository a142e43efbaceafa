"""Preemption and crash recovery of the training loop, in process (the fast counterpart of
test_training_resume::test_exact_resume_after_sigkill_and_sigterm, which does the same with real worker processes):
SIGTERM saves a checkpoint at the current step and returns; a run that dies between checkpoints resumes from the last
one; the resumed run is bitwise the uninterrupted one."""

from __future__ import annotations

import os
import pathlib
import signal

import numpy as np
import pytest
from training_utils import Data, config, init_fn, loss_fn

from latent_pretraining.training import checkpoint, loop, state


class _Crash(Exception):
    """Stands in for SIGKILL: the process is gone after this step, nothing after the last checkpoint is saved."""


def _recorder(losses: dict[int, str], *, sigterm_at: int = -1, crash_at: int = -1):
    def hook(step, st, metrics, logger):
        losses[step] = float(metrics["loss"]).hex()  # a re-run of a step overrides the earlier value
        if step == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's _StopSignal, as under a scheduler
        if step == crash_at:
            raise _Crash(step)

    return hook


def test_sigterm_and_crash_resume_bitwise(tmp_path: pathlib.Path) -> None:
    cfg = config(total_steps=8, every=5)
    ref_losses: dict[int, str] = {}
    ref = loop.run(config=cfg, workdir=str(tmp_path / "ref"), init_fn=init_fn, loss_fn=loss_fn, data=Data(),
                   hooks=[_recorder(ref_losses)])
    assert not ref.interrupted and ref.step == 8

    run, losses = str(tmp_path / "run"), {}
    steps = lambda: checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints")).all_steps()
    # 1) SIGTERM after step 3: a checkpoint at 3 (not a multiple of `every`) and a clean return
    res = loop.run(config=cfg, workdir=run, init_fn=init_fn, loss_fn=loss_fn, data=Data(),
                   hooks=[_recorder(losses, sigterm_at=3)])
    assert res.interrupted and res.step == 3
    assert steps() == [3]
    # 2) resumed from 3, dies after step 7 (checkpoint at 5 written, 6 and 7 lost): the latest is 5
    data = Data()
    with pytest.raises(_Crash):
        loop.run(config=cfg, workdir=run, init_fn=init_fn, loss_fn=loss_fn, data=data, resume=True,
                 hooks=[_recorder(losses, crash_at=7)])
    assert data.index == 7  # it really resumed at 3 (data state index 3) and ran steps 4..7
    assert steps() == [3, 5]
    # 3) resumed from 5 to the end
    data = Data()
    res = loop.run(config=cfg, workdir=run, init_fn=init_fn, loss_fn=loss_fn, data=data, resume=True,
                   hooks=[_recorder(losses)])
    assert not res.interrupted and res.step == 8 and data.index == 8
    want = {k: np.asarray(v) for k, v in state.flatten(ref.state.params).items()}
    got = {k: np.asarray(v) for k, v in state.flatten(res.state.params).items()}
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bitwise
    assert losses == ref_losses
