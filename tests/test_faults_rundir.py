"""Fault injection, run directories (issue 22): a failed start never loses the previous run and never blocks the rerun.

Rows reproduced: `--overwrite` with a config that then fails (mesh larger than the devices) kept nothing; batch size
0 / -4 / not divisible left an empty checkpoints/ + tensorboard/ that made the corrected rerun refuse.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import pytest
from training_utils import Data, config, init_fn, loss_fn

from core.errors import UserError
from latent_pretraining.training import checkpoint, loop, rundir


def _old_run(wd: pathlib.Path) -> dict[str, str]:
    """A stand-in for a finished run (the policy only looks at files): returns {relative path: content}."""
    files = {"checkpoints/7/params/x": "weights", "summary.json": '{"steps": 7}', "tensorboard/events.out.1": "tb"}
    for rel, text in files.items():
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text(text)
    return files


def _tree(wd: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(wd)): p.read_text() for p in wd.rglob("*") if p.is_file()} if wd.exists() else {}


def _asides(wd: pathlib.Path) -> list[pathlib.Path]:
    return sorted(wd.parent.glob(f".{wd.name}{rundir.ASIDE_TAG}*"))


def _run(wd: pathlib.Path, cfg=None, data=None, **kw) -> loop.RunResult:
    return loop.run(config=cfg or config(total_steps=3, every=2), workdir=str(wd), init_fn=init_fn,
                    loss_fn=loss_fn, data=data or Data(), **kw)


class FailingData(Data):
    """Raises at batch `fail_at` (a data pipeline that breaks after the run started)."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at = fail_at

    def __next__(self):
        if self.index == self.fail_at:
            raise OSError(f"simulated read error at batch {self.index}")
        return super().__next__()


def test_overwrite_with_impossible_mesh_keeps_the_old_run(tmp_path: pathlib.Path) -> None:
    wd = tmp_path / "run"
    wd.mkdir()
    before = _old_run(wd)
    cfg = config()
    cfg.mesh.tp = 16  # 8 devices
    with pytest.raises(loop.ConfigError, match=r"^train\.mesh: mesh shape .* do not divide the device count 8") as e:
        _run(wd, cfg, overwrite=True)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert _tree(wd) == before and not _asides(wd)


@pytest.mark.parametrize("batch, match", [
    (0, "the batch size must be a positive integer, got 0"),
    (-4, "the batch size must be a positive integer, got -4"),
    (12, r"batch size 12 is not divisible by the 8 data-parallel devices \(mesh dp=1 x fsdp=8\); use a multiple of 8"),
])
def test_bad_batch_size_fails_fast_and_touches_nothing(tmp_path: pathlib.Path, batch: int, match: str) -> None:
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    old.mkdir()
    before = _old_run(old)
    for wd, kw in ((fresh, {}), (old, {"overwrite": True}), (old, {"resume": True})):
        with pytest.raises(loop.ConfigError, match=match) as e:
            _run(wd, batch_size=batch, **kw)
        assert "\n" not in str(e.value)
    assert not fresh.exists()
    assert _tree(old) == before and not _asides(old)
    cfg = config()
    cfg.optimizer.grad_accum_steps = 3
    with pytest.raises(loop.ConfigError, match=r"grad_accum_steps=3 micro-batches over 8 .* multiple of 24"):
        loop.validate(cfg, batch_size=16)
    assert loop.validate(config(), batch_size=16).shape["fsdp"] == 8
    with pytest.raises(loop.ConfigError, match=r"^data\.batch_size must be a positive integer, got 0$"):
        loop.validate(config(), batch_size=0, batch_name="data.batch_size")


def test_config_values_checked_before_the_workdir(tmp_path: pathlib.Path) -> None:
    cfg = config()
    cfg.checkpoint.every = 0
    with pytest.raises(loop.ConfigError, match=r"train\.checkpoint\.every must be an integer >= 1, got 0"):
        _run(tmp_path / "a", cfg)
    cfg = config()
    cfg.log.progress = "of"
    with pytest.raises(loop.ConfigError, match=r"unknown train\.log\.progress 'of'; did you mean 'off'\?"):
        _run(tmp_path / "a", cfg)
    bad_init = {"Dense_0/kernel": np.zeros((4, 32), np.float32)}
    with pytest.raises(ValueError, match=r"checkpoint shape \(4, 32\) != model shape \(8, 32\)"):
        _run(tmp_path / "a", loaded_params=bad_init)
    assert not (tmp_path / "a").exists()


def test_overwrite_failing_before_first_checkpoint_puts_the_old_run_back(tmp_path: pathlib.Path) -> None:
    wd = tmp_path / "run"
    wd.mkdir()
    before = _old_run(wd)
    with pytest.raises(OSError, match="simulated read error at batch 1"):
        _run(wd, config(total_steps=4, every=2), FailingData(1), overwrite=True)
    assert _tree(wd) == before and not _asides(wd)


def test_overwrite_deletes_the_old_run_only_after_the_first_commit(tmp_path: pathlib.Path) -> None:
    wd = tmp_path / "run"
    wd.mkdir()
    _old_run(wd)
    seen = {}

    def hook(step, state, metrics, logger):
        seen[step] = (len(_asides(wd)), (wd / "summary.json").exists())

    cfg = config(total_steps=4, every=2)
    cfg.checkpoint.async_save = False  # step 2 commits before the hook of step 3 runs
    _run(wd, cfg, hooks=[hook], overwrite=True)
    assert seen[1] == (1, False)  # during the first steps the old run waits in the hidden sibling
    assert seen[3] == (0, False)  # gone once checkpoint 2 committed
    assert not (wd / "checkpoints" / "7").exists() and checkpoint.step_dirs(str(wd / "checkpoints")) == [4, 2]


def test_failed_fresh_start_does_not_block_the_rerun(tmp_path: pathlib.Path) -> None:
    wd, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="simulated read error at batch 0"):
        _run(wd, data=FailingData(0))
    with pytest.raises(OSError, match="simulated read error at batch 0"):
        _run(empty, data=FailingData(0))
    assert not wd.exists()  # was absent: absent again (no empty checkpoints/ or tensorboard/ left behind)
    assert empty.is_dir() and not any(empty.iterdir())  # was empty: empty again
    assert _run(wd).step == 3  # the corrected rerun, same flags, is not refused


def test_resume_that_fails_deletes_nothing(tmp_path: pathlib.Path) -> None:
    wd = tmp_path / "run"
    _run(wd)
    before = sorted(p.name for p in (wd / "checkpoints").iterdir())
    with pytest.raises(OSError, match="simulated read error"):
        _run(wd, config(total_steps=5, every=2), FailingData(3), resume=True)
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == before == ["2", "3"]


def test_workdir_errors_and_leftovers(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "x").write_text("x")
    with pytest.raises(checkpoint.WorkdirExistsError) as e:
        checkpoint.prepare_workdir(str(wd), resume=False, overwrite=False)
    assert isinstance(e.value, UserError) and isinstance(e.value, FileExistsError)
    with pytest.raises(rundir.FlagConflictError, match="not both"):
        _run(wd, resume=True, overwrite=True)
    left = tmp_path / f".run{rundir.ASIDE_TAG}20260101-000000-1"  # what a SIGKILLed --overwrite leaves
    left.mkdir()
    with caplog.at_level(logging.WARNING):
        rundir.prepare(str(wd), resume=True, overwrite=False)
    assert f"interrupted --overwrite left a previous run of {wd} at {left}" in caplog.text
    assert left.exists()  # named, never deleted by a later start
