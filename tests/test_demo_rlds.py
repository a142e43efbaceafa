"""The demo RLDS writer: real TFDS datasets, exact features, determinism, and safe failure on bad arguments."""

import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from shared_assets import DEMO_DATA

from data.demo import writer
from data.demo.world import DemoWorld, WorldConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(episodes=3, val_episodes=2, num_shards=2, max_steps=40)


@pytest.fixture(scope="module")
def demo_dir(demo_data_written):
    """The session's shared demo datasets (conftest), written with exactly SMALL."""
    assert writer.GenerationConfig(**DEMO_DATA) == writer.GenerationConfig(**SMALL)
    return demo_data_written


def test_datasets_load_offline_with_declared_features(demo_dir):
    out, summaries = demo_dir
    assert [s["dataset"] for s in summaries] == ["demo_robot/1.0.0", "demo_human/1.0.0"]
    for embodiment, name in writer.DATASET_NAMES.items():
        builder = tfds.builder_from_directory(os.path.join(out, name, writer.VERSION))
        declared = writer.features(64, with_actions=embodiment == "robot")
        assert builder.info.features.to_json() == declared.to_json()
        assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3, "val": 2}
        assert len(builder.info.splits["train"].shard_lengths) == 2
        episode = next(iter(builder.as_dataset(split="train")))
        steps = list(episode["steps"].as_numpy_iterator())
        first, last = steps[0], steps[-1]
        assert first["is_first"] and not first["is_last"] and last["is_last"]
        assert first["observation"]["image"].shape == (64, 64, 3)
        assert first["ground_truth"]["flow"].shape == (64, 64, 2)
        assert first["ground_truth"]["flow"].dtype == np.float16
        assert np.abs(first["ground_truth"]["flow"]).max() > 0, "the effector moves on the first step"
        np.testing.assert_array_equal(last["ground_truth"]["flow"], 0)
        assert isinstance(first["language_instruction"], bytes) and first["language_instruction"]
        meta = episode["episode_metadata"]
        assert meta["embodiment"].numpy().decode() == embodiment
        if embodiment == "robot":
            assert first["action"].shape == (2,) and first["observation"]["state"].shape == (2,)
            np.testing.assert_array_equal(last["action"], 0)
            assert bool(meta["success"]) == bool(last["is_terminal"])
        else:  # action-free video
            assert "action" not in first and "state" not in first["observation"]


def test_written_actions_replay_the_episode(demo_dir):
    """Replaying the stored actions from the stored seed reproduces the stored states and success."""
    out, _ = demo_dir
    builder = tfds.builder_from_directory(os.path.join(out, "demo_robot", writer.VERSION))
    episode = next(iter(builder.as_dataset(split="val")))
    steps = list(episode["steps"].as_numpy_iterator())
    env = DemoWorld(WorldConfig(images=False, max_steps=SMALL["max_steps"]))
    env.reset(seed=int(episode["episode_metadata"]["seed"]))
    for step in steps[:-1]:
        np.testing.assert_allclose(env.state(), step["observation"]["state"], atol=1e-6)
        env.step(step["action"])
    np.testing.assert_allclose(env.state(), steps[-1]["observation"]["state"], atol=1e-6)
    assert env.success == bool(episode["episode_metadata"]["success"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (str(tmp_path / k) for k in "abc")
    cfg = writer.GenerationConfig(**{**SMALL, "embodiments": ("robot",)})
    writer.write_datasets(a, cfg, progress=False)
    writer.write_datasets(b, cfg, progress=False)
    writer.write_datasets(c, writer.GenerationConfig(**{**SMALL, "embodiments": ("robot",), "seed": 1}),
                          progress=False)
    da, db, dc = (os.path.join(d, "demo_robot", writer.VERSION) for d in (a, b, c))
    shards = sorted(f for f in os.listdir(da) if ".tfrecord" in f)
    assert shards and all(filecmp.cmp(os.path.join(da, f), os.path.join(db, f), shallow=False) for f in shards)
    assert not all(filecmp.cmp(os.path.join(da, f), os.path.join(dc, f), shallow=False) for f in shards)
    first = {"train": None}
    for d in (da, db):
        ep = next(iter(tfds.builder_from_directory(d).as_dataset(split="train")))
        img = [s["observation"]["image"] for s in ep["steps"].as_numpy_iterator()]
        if first["train"] is None:
            first["train"] = img
        else:
            for x, y in zip(first["train"], img, strict=True):
                np.testing.assert_array_equal(x, y)
    with open(os.path.join(da, "generation.json")) as f:
        gen = json.load(f)
    assert gen["seed"] == 0 and gen["embodiment"] == "robot"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "push_to_regoin"], "unknown task 'push_to_regoin'; did you mean 'push_to_region'?"),
    (["--resolution", "100"], "unsupported resolution 100: expected one of (64, 128, 256)"),
    (["--episodes", "-3"], "episode counts must be >= 1 (train) and >= 0 (val), got -3 and"),
])
def test_bad_arguments_fail_in_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = _cli("--out", str(out), "--quiet", *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _cli("--out", str(blocker / "sub"), "--quiet", "--episodes", "1")
    assert result.returncode == 2
    assert "error: cannot write to output directory" in result.stderr and result.stderr.count("\n") == 1


def test_failure_midway_leaves_no_dataset(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = writer.generate_episode

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "generate_episode", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        writer.write_datasets(str(tmp_path), writer.GenerationConfig(**SMALL), progress=False)
    assert os.listdir(tmp_path) == [], "a crashed run must leave nothing behind, not even a .partial directory"


def test_fewer_episodes_than_shards(tmp_path):
    cfg = writer.GenerationConfig(episodes=2, val_episodes=1, num_shards=4, max_steps=10, embodiments=("human",))
    writer.write_datasets(str(tmp_path), cfg, progress=False)
    builder = tfds.builder_from_directory(str(tmp_path / "demo_human" / writer.VERSION))
    assert builder.info.splits["val"].num_examples == 1


def test_existing_dataset_needs_overwrite(demo_dir):
    out, _ = demo_dir
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        writer.write_datasets(out, writer.GenerationConfig(**SMALL), progress=False)
