"""The loop fetches metrics only at sync steps (log, checkpoint, last) and logs exactly what per-step fetching logs."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from training_utils import Data, config, init_fn, loss_fn

from latent_pretraining.training import loop, metrics


def _run(tmp: pathlib.Path, name: str, hook, monkeypatch) -> tuple[list, int]:
    """(scalars written by the logger, number of metric fetches) of a 7-step run: log every 3, checkpoint every 5."""
    written, fetches = [], []
    real_fetch = loop._fetch

    def fetch(ms):
        fetches.append(len(ms))
        return real_fetch(ms)

    monkeypatch.setattr(loop, "_fetch", fetch)
    monkeypatch.setattr(metrics.MetricLogger, "write_scalars",
                        lambda self, step, s: written.append((step, {k: v for k, v in s.items()
                                                                     if not k.startswith("perf/")})))
    cfg = config(total_steps=7, every=5)
    cfg.log.every = 3
    loop.run(config=cfg, workdir=str(tmp / name), init_fn=init_fn, loss_fn=loss_fn, data=Data(), hooks=[hook])
    return written, len(fetches)


def test_metrics_fetched_on_sync_steps_only_log_the_same(tmp_path: pathlib.Path, monkeypatch) -> None:
    every_step: dict[int, dict] = {}

    def plain(step, state, m, logger):  # a plain hook: the loop fetches every step (the reference)
        assert state is not None
        every_step[step] = dict(m)

    class Deferred:
        deferred = True

        def __init__(self):
            self.seen: dict[int, dict] = {}
            self.with_state: list[int] = []

        def __call__(self, step, state, m, logger):
            self.seen[step] = dict(m)
            if state is not None:
                self.with_state.append(step)

    ref_written, ref_fetches = _run(tmp_path, "ref", plain, monkeypatch)
    deferred = Deferred()
    written, fetches = _run(tmp_path, "lazy", deferred, monkeypatch)

    assert ref_fetches == 7
    assert fetches == 4  # steps 3 (log), 5 (checkpoint), 6 (log), 7 (last)
    assert deferred.with_state == [3, 5, 6, 7]  # state only where it is the step's own
    assert [s for s, _ in written] == [s for s, _ in ref_written] == [3, 6, 7]
    assert written == ref_written  # the logged interval means are identical, bitwise
    assert sorted(deferred.seen) == sorted(every_step) == list(range(1, 8))
    for s in every_step:
        assert deferred.seen[s].keys() == every_step[s].keys()
        for k in every_step[s]:
            np.testing.assert_array_equal(deferred.seen[s][k], every_step[s][k], err_msg=f"step {s} {k}")


def test_a_nonfinite_step_between_syncs_is_named_and_never_checkpointed(tmp_path: pathlib.Path) -> None:
    cfg = config(total_steps=7, every=3)
    cfg.log.every = 5
    with pytest.raises(Exception, match="non-finite metric at step 2"):
        loop.run(config=cfg, workdir=str(tmp_path), init_fn=init_fn, loss_fn=loss_fn, data=Data(nan_at=1))
    assert not (tmp_path / "checkpoints" / "3").exists()
