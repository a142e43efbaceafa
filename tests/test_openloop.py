"""policy/openloop.py: agreement figures on hand-made actions; the queries it builds from real demo RLDS episodes
(history frames clamped at the start, the episode's proprio and instruction); the training-overlap count."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from core.errors import UserError
from policy import openloop


def _expert() -> np.ndarray:
    """f32[6, 7]: two moving dims (the speed limit 0.03 held twice, one 0), a constant gripper."""
    a = np.zeros((6, 7), np.float32)
    a[:, 0] = [0.03, 0.03, 0.01, -0.02, 0.0, 0.015]
    a[:, 1] = [0.0, 0.01, -0.03, 0.02, 0.03, -0.01]
    a[:, 6] = 1.0
    return a


def test_agreement_by_hand() -> None:
    e = _expert()
    same = openloop.agreement(e, e)
    assert same["dims"] == [0, 1] and same["steps"] == 6  # the gripper and the constant dims are left out
    assert same["cosine"] == pytest.approx(1.0) and same["unexplained"] == pytest.approx(0.0)
    assert same["speed_ratio"] == pytest.approx(1.0) and same["at_limit"] == same["expert_at_limit"]
    assert same["expert_at_limit"] == [round(2 / 6, 4), round(2 / 6, 4)]  # 0.03 twice in dim 0; |-0.03|, 0.03
    assert same["expert_at_zero"] == [round(1 / 6, 4), round(1 / 6, 4)]
    opposite = openloop.agreement(-e, e)
    assert opposite["cosine"] == pytest.approx(-1.0) and opposite["unexplained"] > 1.0
    right = np.zeros_like(e)
    right[:, 0] = 0.03  # always the speed limit to the right: what an unsure argmax bin head did
    r = openloop.agreement(right, e)
    assert r["at_limit"] == [1.0, 0.0] and r["at_zero"] == [0.0, 1.0]
    cos = [0.03 * x / (0.03 * np.hypot(x, y)) for x, y in e[:, :2] if np.hypot(x, y) > 0.1 * 0.03]
    assert r["cosine"] == pytest.approx(np.mean(cos)) and np.isnan(r["cosine_ci95"]).all()  # no episodes given
    # the interval resamples whole episodes: one episode of agreement and one of disagreement spans both
    two = openloop.agreement(np.concatenate([e, -e]), np.concatenate([e, e]), episode=np.repeat([0, 1], 6))
    assert two["cosine"] == pytest.approx(0.0) and two["cosine_ci95"] == pytest.approx([-1.0, 1.0])
    one = openloop.agreement(e, e, episode=np.zeros(6, int))
    assert one["cosine_ci95"] == pytest.approx([1.0, 1.0])
    with pytest.raises(UserError, match="same non-empty"):
        openloop.agreement(e[:, :2], e)
    with pytest.raises(UserError, match="do not vary"):
        openloop.agreement(np.ones((3, 7)), np.ones((3, 7)))


def _policy_config(root: str, split: str, datasets=("demo_robot",)) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": {"root": root, "datasets": datasets, "train_split": split}})


def test_training_overlap_matches_episode_ids(demo_data, tmp_path) -> None:
    import shutil

    from data.demo import writer
    from data.episodes import EpisodeSource, iter_episodes

    def read(root, split):
        return list(iter_episodes(EpisodeSource(root=root, name="demo_robot", split=split), 0, decode=False))

    cfg = _policy_config(demo_data, "train[:2]")
    overlap = openloop.training_overlap
    assert overlap(read(demo_data, "train[1:3]"), demo_data, "demo_robot", cfg) == 1
    assert overlap(read(demo_data, "train"), demo_data, "demo_robot", cfg) == 2
    assert overlap(read(demo_data, "val"), demo_data, "demo_robot", cfg) == 0
    # the same episodes in a copied root match by the dataset's episode ids (the world seeds) ...
    copy = str(tmp_path / "copy")
    shutil.copytree(demo_data, copy)
    assert overlap(read(copy, "train[:2]"), copy, "demo_robot", cfg) == 2
    # ... and another generation seed's episodes never do, however its split is named (the old rule counted 2)
    other = str(tmp_path / "other")
    writer.write_datasets(other, writer.GenerationConfig(episodes=2, val_episodes=0, embodiments=("robot",),
                                                         num_shards=1, max_steps=20, seed=8), progress=False)
    assert overlap(read(other, "train[:2]"), other, "demo_robot", cfg) == 0
    assert overlap(read(demo_data, "train[:2]"), demo_data, "demo_human", cfg) == 0  # not in its training data
    gone = _policy_config(str(tmp_path / "moved"), "train[:2]")
    assert overlap(read(demo_data, "train[:2]"), demo_data, "demo_robot", gone) is None  # cannot be told


class _Recorder:
    """A stand-in policy (two history frames 2 apart, takes the state) that records its queries and always moves
    right at the speed limit."""

    def __init__(self, root: str) -> None:
        self.calls: list[tuple] = []
        self.config = _policy_config(root, "train[:2]")
        self.resolution = 64

    def metadata(self) -> dict:
        return {"history_offsets": [-2, 0], "proprio_dim": 2}

    def act(self, images, instruction, *, seed=0, proprio=None):
        self.calls.append((images, list(instruction), proprio, seed))
        out = np.zeros((len(images), 3, 7), np.float32)
        out[:, :, 0] = 0.03
        return out


def test_queries_from_real_episodes_and_the_cli(demo_data, monkeypatch, tmp_path, capsys) -> None:
    from data.episodes import EpisodeSource, iter_episodes

    eps = list(iter_episodes(EpisodeSource(root=demo_data, name="demo_robot", split="train"), 64))
    rec = _Recorder(demo_data)
    pred, expert, which = openloop.rollout_pairs(rec, eps, batch=4)
    n = sum(len(e.action) for e in eps)
    assert pred.shape == expert.shape == (n, 7) and which.tolist() == [k for k, e in enumerate(eps) for _ in e.action]
    np.testing.assert_array_equal(expert, np.concatenate([e.action for e in eps]))
    assert np.all(pred[:, 0] == 0.03)
    images, texts, proprio, seed = rec.calls[0]
    ep = eps[0]
    np.testing.assert_array_equal(images[0], ep.frames[[0, 0]])  # t = 0: t - 2 clamped to the first frame
    np.testing.assert_array_equal(images[3], ep.frames[[1, 3]])
    np.testing.assert_array_equal(proprio[3], ep.proprio[3])
    assert texts[0] == ep.language and seed == 0 and rec.calls[1][3] == 1
    assert all(len(c[0]) == 4 for c in rec.calls)  # the last batch is padded to the same size

    monkeypatch.setattr("policy.policy.Policy.from_checkpoint", lambda *a, **k: rec)
    out = tmp_path / "ol.json"
    res = openloop.main(["--checkpoint", "x", "--data", demo_data, "--split", "train[1:3]", "--out", str(out)])
    assert res["episodes"] == 2 and res["trained_on"] == 1 and json.loads(out.read_text())["dims"] == res["dims"]
    assert res["at_limit"][0] == 1.0 and "(1 of them among its training demos)" in capsys.readouterr().out
