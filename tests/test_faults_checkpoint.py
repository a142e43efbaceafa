"""Fault injection, checkpoints (issue 22): integrity manifests, fall-back to the newest intact checkpoint, data
fingerprints, and logs that cover a resumed run once.

Rows reproduced: 64 bytes flipped inside a params data file restored silently; a truncated / zeroed data file, a
missing orbax manifest or bad data-state JSON gave long tracebacks and no fall-back; after a resume curves/summary
covered only the resumed steps and TensorBoard held duplicate rows.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
from training_utils import Data, config, flip, init_fn, loss_fn, params_data_file

from core.errors import UserError
from latent_pretraining.training import checkpoint, loop, metrics, state


def _run(wd: pathlib.Path, cfg=None, data=None, **kw) -> loop.RunResult:
    return loop.run(config=cfg or config(total_steps=4, every=2), workdir=str(wd), init_fn=init_fn,
                    loss_fn=loss_fn, data=data or Data(), **kw)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """A finished 4-step run (checkpoints 2 and 4, data fingerprint 'fp-A') and its final params."""
    wd = tmp_path_factory.mktemp("clean") / "run"
    res = _run(wd, data_fingerprint="fp-A")
    return wd, {k: np.asarray(v) for k, v in state.flatten(res.state.params).items()}


@pytest.fixture
def run_copy(clean, tmp_path: pathlib.Path) -> pathlib.Path:
    dst = tmp_path / "run"
    shutil.copytree(clean[0], dst)
    return dst


def test_manifest_is_sealed_with_the_checkpoint(clean) -> None:
    ck = clean[0] / "checkpoints"
    for step in (2, 4):
        assert checkpoint.verify(str(ck / str(step))) == (True, "")
    files = json.loads((ck / "4" / checkpoint.MANIFEST).read_text())["files"]
    assert {"data/metadata", "assets/config.json", f"assets/{checkpoint.FORMAT_ASSET}",
            "params/manifest.ocdbt"} <= set(files)
    assert any(f.startswith("train_state/") for f in files)
    assert json.loads(checkpoint.read_asset(str(ck), 4, checkpoint.FINGERPRINT_ASSET)) == {"fingerprint": "fp-A"}


def _truncate(step_dir: pathlib.Path) -> None:
    f = params_data_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _zero(step_dir: pathlib.Path) -> None:
    f = params_data_file(step_dir)
    f.write_bytes(b"\x00" * f.stat().st_size)


def _drop_entry(step_dir: pathlib.Path) -> None:
    m = step_dir / checkpoint.MANIFEST
    doc = json.loads(m.read_text())
    doc["files"].pop("params/manifest.ocdbt")
    m.write_text(json.dumps(doc))


CORRUPTIONS = {
    "flipped": (lambda d: flip(params_data_file(d)), "does not match its sha256"),
    "truncated": (_truncate, "bytes, .* were written"),
    "zeroed": (_zero, "does not match its sha256"),
    "orbax_manifest_missing": (lambda d: (d / "params" / "manifest.ocdbt").unlink(),
                               "params/manifest.ocdbt is missing"),
    "bad_data_json": (lambda d: (d / "data" / "metadata").write_text('{"state": {"index": 4'), "data/metadata"),
    "manifest_entry_missing": (_drop_entry, "params/manifest.ocdbt is not in its integrity.json"),
    "manifest_deleted": (lambda d: (d / checkpoint.MANIFEST).unlink(), "integrity.json is missing"),
    "stray_file": (lambda d: (d / "train_state" / "extra").write_bytes(b"x"), "train_state/extra is not in"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_corruption_falls_back_or_refuses(run_copy: pathlib.Path, kind: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    corrupt, why = CORRUPTIONS[kind]
    ck = run_copy / "checkpoints"
    corrupt(ck / "4")
    ok, note = checkpoint.verify(str(ck / "4"))
    assert not ok and re.search(why, note), note
    with caplog.at_level(logging.WARNING):
        assert checkpoint.select_step(str(ck)) == (2, [4])
    assert f"checkpoint {ck}/4 is corrupt" in caplog.text
    corrupt(ck / "2")
    with pytest.raises(checkpoint.CheckpointCorruptError, match=r"no intact checkpoint in .*\(4: .*; 2: .*\)") as e:
        checkpoint.select_step(str(ck))
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_flipped_params_resume_from_the_previous_checkpoint(clean, run_copy: pathlib.Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    ck = run_copy / "checkpoints"
    flip(params_data_file(ck / "4"))
    with pytest.raises(checkpoint.CheckpointCorruptError,
                       match=r"checkpoint .*/4 is corrupt: file params/.* does not match its sha256"):
        checkpoint.load_params(str(ck), 4)  # asked for that step explicitly: refused, not silently wrong
    with caplog.at_level(logging.WARNING):
        data = Data()
        res = _run(run_copy, data=data, resume=True, data_fingerprint="fp-A")
    assert f"checkpoint {ck}/4 is corrupt" in caplog.text
    assert data.index == 4 and res.step == 4  # restored 2, trained 3 and 4 again
    for k, v in state.flatten(res.state.params).items():
        np.testing.assert_array_equal(np.asarray(v), clean[1][k], err_msg=k)  # bitwise the uninterrupted result
    moved = list((run_copy / "corrupt_checkpoints").iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["4"]  # kept for inspection, out of the way
    assert checkpoint.verify(str(ck / "4")) == (True, "")  # rewritten by this run


def test_no_intact_checkpoint_refuses_in_one_line(run_copy: pathlib.Path) -> None:
    for step in ("2", "4"):
        _zero(run_copy / "checkpoints" / step)
    with pytest.raises(checkpoint.CheckpointCorruptError) as e:
        _run(run_copy, resume=True)
    assert "\n" not in str(e.value) and "--overwrite" in str(e.value)
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["2", "4"]  # nothing deleted


def test_checkpoint_without_manifest_from_an_older_version(run_copy: pathlib.Path) -> None:
    step_dir = run_copy / "checkpoints" / "4"
    (step_dir / checkpoint.MANIFEST).unlink()
    (step_dir / "assets" / checkpoint.FORMAT_ASSET).unlink()
    ok, note = checkpoint.verify(str(step_dir))
    assert ok and "restored unverified" in note


def test_data_fingerprint_mismatch_is_refused(run_copy: pathlib.Path) -> None:
    cfg = config(total_steps=6, every=2)
    with pytest.raises(checkpoint.DataFingerprintError,
                       match=r"checkpoint .*/4 was trained on data 'fp-A' but this run reads 'fp-B'") as e:
        _run(run_copy, cfg, resume=True, data_fingerprint="fp-B")
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert checkpoint.step_dirs(str(run_copy / "checkpoints")) == [4, 2]  # untouched
    assert _run(run_copy, cfg, resume=True, data_fingerprint="fp-A").step == 6


def _tb_steps(logdir: pathlib.Path, tag: str) -> list[int]:
    import tensorflow as tf

    return sorted(e.step for f in logdir.glob("events.out.tfevents.*")
                  for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value if v.tag == tag)


def test_history_and_tensorboard_cover_a_resumed_run_once(tmp_path: pathlib.Path) -> None:
    wd = tmp_path / "run"
    cfg = config(total_steps=6, every=2)
    cfg.log.every, cfg.log.tensorboard = 1, True

    class Crash(Exception):
        pass

    def crash(step, st, m, logger):
        if step == 5:  # after checkpoint 4: step 5 is logged, then the process dies
            raise Crash

    history = metrics.StepHistory(str(wd / "history.jsonl"), select=lambda k: k == "loss")
    with pytest.raises(Crash):
        _run(wd, cfg, hooks=[history, crash])
    assert _tb_steps(wd / "tensorboard", "loss") == [1, 2, 3, 4, 5]
    (events,) = (wd / "tensorboard").glob("events.out.tfevents.*")
    with open(events, "ab") as f:
        f.write(b"\x07" * 9)  # a record cut short by the kill
    with open(wd / "history.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    history = metrics.StepHistory(str(wd / "history.jsonl"), select=lambda k: k == "loss")
    _run(wd, cfg, hooks=[history], resume=True)
    assert _tb_steps(wd / "tensorboard", "loss") == [1, 2, 3, 4, 5, 6]  # 5 once, not twice
    rows = history.read()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and set(rows[0]) == {"step", "loss"}
    lines = (wd / "history.jsonl").read_text().splitlines()
    assert len(lines) == 6  # the replayed row 5 and the cut-off line were dropped, not shadowed
    assert metrics.prune_events(str(wd / "tensorboard"), 6) == 0


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_curve_hook_keeps_the_whole_run(tmp_path: pathlib.Path) -> None:
    from latent_pretraining.train import CurveHook

    first = CurveHook(str(tmp_path))
    for step in (1, 2, 3):
        first(step, None, {"loss": np.float32(step), "grad_norm": 1.0}, None)
    resumed = CurveHook(str(tmp_path))  # restored from checkpoint 2: step 3 is replayed
    for step in (3, 4):
        resumed(step, None, {"loss": np.float32(10 * step)}, None)
    resumed.write(str(tmp_path))
    rows = json.loads((tmp_path / "curves.json").read_text())
    assert rows == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 30.0},
                    {"step": 4, "loss": 40.0}]
    assert os.path.exists(tmp_path / "train_history.jsonl")
