"""Windows at episode boundaries, fps-dependent strides, and normalization stats / apply / invert / cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rlds_fixtures as fx

from data import mixture as mx
from data import normalization as nz
from data import oxe, rlds, windows
from data.tf_setup import tf


def _traj(n: int, valid_last: bool = True, has_actions: bool = True) -> dict:
    action = np.zeros((n, 7), np.float32)
    action[:, 0] = np.arange(n) + 1.0  # action id
    action[:, 6] = [1.0 if t < 3 else 0.0 for t in range(n)]  # gripper closes at t = 3
    valid = np.full(n, has_actions)
    if not valid_last:
        valid[-1] = False
    return {"image_primary": tf.constant([f"f{t}".encode() for t in range(n)]), "image_wrist": tf.fill([n], ""),
            "action": tf.constant(action), "action_valid": tf.constant(valid),
            "proprio": tf.zeros([n, 8]), "language": tf.constant("go"), "dataset_index": tf.constant(1),
            "episode_id": tf.constant(7, tf.int64)}


def _frames(x: np.ndarray) -> list:
    return [[int(s.decode()[1:]) for s in row] if np.ndim(row) else int(row.decode()[1:]) for row in x]


def test_vla_window_boundaries() -> None:
    n, h = 6, 4
    w = windows.make_windows(_traj(n, valid_last=False), windows.WindowSpec("vla", (-2, 0), horizon=h), stride=1)
    w = {k: v.numpy() for k, v in w.items()}
    assert _frames(w["history"]) == [[0, 0], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5]]
    np.testing.assert_array_equal(w["history_valid"][:, 0], [False, False, True, True, True, True])
    assert w["history_valid"][:, 1].all()
    assert _frames(w["future"]) == [4, 5, 5, 5, 5, 5]
    np.testing.assert_array_equal(w["future_valid"], [True, True, False, False, False, False])
    assert w["actions"].shape == (n, h, 7)
    # chunk t..t+H-1; step 5 (last) action is invalid, so the mask stops at 4
    np.testing.assert_array_equal(w["actions"][0, :, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(w["action_pad_mask"][3], [True, True, False, False])
    np.testing.assert_array_equal(w["action_pad_mask"][5], [False] * 4)
    # padding = zero motion + gripper of the last valid action (closed, 0.0)
    np.testing.assert_array_equal(w["actions"][3, 2:], np.zeros((2, 7)))
    np.testing.assert_array_equal(w["actions"][0, :, 6], [1, 1, 1, 0])
    np.testing.assert_array_equal(w["step"], np.arange(n))
    assert (w["dataset_index"] == 1).all() and (w["episode_id"] == 7).all() and w["language"][0] == b"go"


def test_lam_clip_and_stride() -> None:
    spec = windows.lam_window(clip_len=3, clip_stride=2)
    w = {k: v.numpy() for k, v in windows.make_windows(_traj(5), spec, stride=1).items()}
    assert _frames(w["clip"]) == [[0, 2, 4], [1, 3, 4], [2, 4, 4], [3, 4, 4], [4, 4, 4]]
    np.testing.assert_array_equal(w["clip_valid"][1], [True, True, False])
    assert w["actions"].shape == (5, 2, 7)
    np.testing.assert_array_equal(w["action_pad_mask"][2], [True, False])


def test_fps_scaled_strides_and_drop_last() -> None:
    spec = windows.WindowSpec("vla", (-1, 0), horizon=2, reference_fps=5, strides=(("demo_robot", 3),),
                              drop_last_step=True)
    assert spec.frame_stride("fractal20220817_data", 3) == 1
    assert spec.frame_stride("taco_play", 15) == 3
    assert spec.frame_stride("demo_robot", 10) == 3  # explicit override
    assert spec.frame_stride("kuka", 10) == 2
    w = {k: v.numpy() for k, v in windows.make_windows(_traj(8), spec, stride=2).items()}
    assert len(w["step"]) == 7
    assert _frames(w["history"])[3] == [1, 3] and _frames(w["future"])[:3] == [4, 5, 6]
    np.testing.assert_array_equal(w["actions"][0, :, 0], [1, 2])  # actions stay at the native rate


def test_action_free_window_masks() -> None:
    w = windows.make_windows(_traj(4, has_actions=False), windows.vipra_window(), stride=1)
    assert not w["action_pad_mask"].numpy().any() and not w["action_valid"].numpy().any()
    with pytest.raises(ValueError, match="kind"):
        windows.WindowSpec(kind="video")


def test_stats_one_pass_cache_and_roundtrip(tmp_path) -> None:
    root = fx.shared_root("demo")
    spec = oxe.get_spec("demo_robot")
    opened = rlds.open_dataset(root, "demo_robot", "1.0.0")
    handle = mx.DatasetHandle(mx.MixtureEntry("demo_robot"), spec, opened, "train", {})
    trajs = list(mx.standardized(handle, "train", seed=None, shuffle_files=False).as_numpy_iterator())
    acts = np.concatenate([t["action"][t["action_valid"]] for t in trajs])
    calls = []

    def fn():
        calls.append(1)
        return mx.standardized(handle, "train", seed=None, shuffle_files=False)

    stats = nz.load_or_compute(opened, spec, "train", fn, cache_dir=str(tmp_path))
    stats2 = nz.load_or_compute(opened, spec, "train", fn, cache_dir=str(tmp_path))
    assert len(calls) == 1 and stats == stats2  # second call hits the JSON cache
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("dataset_statistics_demo_robot_") and files[0].endswith(".json")
    assert opened.features_hash()[:4] and json.loads((tmp_path / files[0]).read_text())["dataset"] == "demo_robot"
    np.testing.assert_allclose(stats["action"]["mean"], acts.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], acts.std(0), atol=1e-6)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(acts, 0.99, axis=0), atol=1e-6)
    for k in ("min", "max", "q01"):
        assert len(stats["action"][k]) == 7 and len(stats["proprio"][k]) == 8
    assert stats["num_trajectories"] == 16 and stats["num_action_transitions"] == len(acts)
    assert stats["action_mask"] == [True] * 6 + [False]
    assert stats["proprio_mask"] == [True, True] + [False] * 6

    x = acts[:5] + 0.001
    for mode in ("normal", "bounds"):
        y = nz.normalize(x, stats, "action", mode)
        np.testing.assert_array_equal(y[:, 6], x[:, 6])  # gripper raw
        np.testing.assert_allclose(nz.unnormalize(y, stats, "action", mode)[:, :2], np.clip(
            x[:, :2], stats["action"]["q01"][:2], stats["action"]["q99"][:2]) if mode == "bounds" else x[:, :2],
            atol=1e-5)
        yt = nz.normalize(tf.constant(x), stats, "action", mode).numpy()
        np.testing.assert_allclose(yt, y, atol=1e-6)
    assert np.abs(nz.normalize(acts, stats, "action", "bounds")).max() <= 1.0
    z = nz.normalize(acts, stats, "action", "normal")
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-4)
    with pytest.raises(ValueError, match="normalization mode"):
        nz.normalize(x, stats, "action", "zscore")
