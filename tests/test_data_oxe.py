"""Registry standardizations on tiny fixtures with each dataset's real layout, and clear errors on bad inputs."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import rlds_fixtures as fx

from data import mixture as mx
from data import oxe, rlds
from data.rlds import DataError

GRIPPER_CONVENTION = {"fractal20220817_data", "kuka", "jaco_play", "bridge_dataset", "bridge", "taco_play"}


def _trajectories(root: str, name: str) -> list[dict]:
    spec = oxe.get_spec(name)
    opened = rlds.open_dataset(root, name, spec.default_version)
    handle = mx.DatasetHandle(mx.MixtureEntry(name), spec, opened, "train", {})
    return list(mx.standardized(handle, "train", seed=None, shuffle_files=False).as_numpy_iterator())


def _raw(name: str, index: int) -> dict:
    _, feats = fx.layouts()[name]
    return fx.make_episode(name, feats, index, 6 + index % 7, seed=0)


def _col(steps: list[dict], *path: str) -> np.ndarray:
    out = []
    for s in steps:
        for p in path:
            s = s[p]
        out.append(s)
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("name", sorted(oxe.REGISTRY))
def test_standardized_layout_and_values(name: str) -> None:
    root = fx.shared_root("oxe")
    trajs = _trajectories(root, name)
    assert trajs, name
    expected_eps = [0, 2, 4] if name == "kuka" else list(range(6))  # kuka keeps successful episodes only
    found = sorted(int(t["language"].decode().rsplit("ep", 1)[1]) for t in trajs)
    assert found == expected_eps
    for tr in trajs:
        i = int(tr["language"].decode().rsplit("ep", 1)[1])
        assert tr["language"].decode() == f"pick up the block ep{i}"
        n = 6 + i % 7
        steps = _raw(name, i)["steps"]
        first = 0
        if oxe.get_spec(name).drop_first_step:  # bridge_dataset: OpenVLA's bridge_orig drops the all-zero step 0
            first, n, steps = 1, n - 1, steps[1:]
        assert tr["action"].shape == (n, 7) and tr["action"].dtype == np.float32
        assert tr["proprio"].shape == (n, 8) and tr["proprio"].dtype == np.float32
        assert tr["action_valid"].shape == (n,) and tr["action_valid"].dtype == bool
        assert tr["image_primary"].shape == (n,) and all(len(b) > 0 for b in tr["image_primary"])
        has_wrist = name in ("taco_play", "jaco_play") or (name == "bridge_dataset" and fx.bridge_has_image(3, i))
        assert all((len(b) > 0) == has_wrist for b in tr["image_wrist"])
        a, p = tr["action"], tr["proprio"]
        if name in GRIPPER_CONVENTION:
            np.testing.assert_array_equal(a[:, 6], [fx.expected_open(t, n + first) for t in range(first, n + first)])
        if not oxe.get_spec(name).has_actions:
            assert not tr["action_valid"].any() and not a.any() and not p.any()
            continue
        if name == "demo_robot":
            assert tr["action_valid"][:-1].all() and not tr["action_valid"][-1]
            np.testing.assert_allclose(a[:-1, :2], _col(steps, "action")[:-1])
            np.testing.assert_array_equal(a[:-1, 2:], np.tile([0, 0, 0, 0, 1], (n - 1, 1)))
            assert not a[-1].any()
            np.testing.assert_allclose(p[:, :2], _col(steps, "observation", "state"))
            continue
        if name == "metaworld_robot":  # hand xyz motion, no rotation, effort (+1 closes) -> 1 = open; last step invalid
            assert tr["action_valid"][:-1].all() and not tr["action_valid"][-1]
            raw = _col(steps, "action")
            np.testing.assert_allclose(a[:-1, :3], raw[:-1, :3])
            assert not a[:, 3:6].any()
            np.testing.assert_allclose(a[:-1, 6], np.clip((1.0 - raw[:-1, 3]) / 2.0, 0.0, 1.0), rtol=1e-6)
            np.testing.assert_allclose(p[:, :4], _col(steps, "observation", "state"))
            assert not p[:, 4:].any()
            continue
        assert tr["action_valid"].all()
        if name in ("fractal20220817_data", "kuka"):
            np.testing.assert_allclose(a[:, :3], _col(steps, "action", "world_vector"))
            np.testing.assert_allclose(a[:, 3:6], _col(steps, "action", "rotation_delta"))
            key = "base_pose_tool_reached" if name == "fractal20220817_data" else \
                "clip_function_input/base_pose_tool_reached"
            np.testing.assert_allclose(p[:, :7], _col(steps, "observation", key))  # kuka: zlib-inflated
            np.testing.assert_allclose(p[:, 7:], _col(steps, "observation", "gripper_closed"))
        elif name == "jaco_play":
            np.testing.assert_allclose(a[:, :3], _col(steps, "action", "world_vector"))
            assert not a[:, 3:6].any()
            np.testing.assert_allclose(p[:, :7], _col(steps, "observation", "end_effector_cartesian_pos"))
        elif name == "language_table":
            np.testing.assert_allclose(a[:, :2], _col(steps, "action"))
            np.testing.assert_array_equal(a[:, 2:], np.tile([0, 0, 0, 0, 1], (n, 1)))
            np.testing.assert_allclose(p[:, :2], _col(steps, "observation", "effector_translation"))
            assert not p[:, 2:].any()
        elif name == "bridge_dataset":
            np.testing.assert_allclose(a[:, :6], _col(steps, "action")[:, :6])
            np.testing.assert_allclose(p[:, :7], _col(steps, "observation", "state"))
        elif name == "bridge":
            np.testing.assert_allclose(a[:, :3], _col(steps, "action", "world_vector"))
        elif name == "taco_play":
            np.testing.assert_allclose(a[:, :6], _col(steps, "action", "rel_actions_world")[:, :6])
            obs = _col(steps, "observation", "robot_obs")
            np.testing.assert_allclose(p[:, :7], np.concatenate([obs[:, :6], obs[:, 7:8]], 1))


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(DataError, match="did you mean 'fractal20220817_data'"):
        oxe.get_spec("fractal2022_data")
    with pytest.raises(DataError, match="did you mean 'language_table'"):
        oxe.get_spec("languagetable")


def test_missing_directory_and_wrong_version(tmp_path) -> None:
    root = fx.shared_root("oxe")
    with pytest.raises(DataError, match=r"directory .*nonexistent.* does not exist"):
        rlds.open_dataset(str(tmp_path), "nonexistent", "1.0.0")
    with pytest.raises(DataError, match=r"version '9.9.9' not found .* available versions: \['0.1.0'\]"):
        rlds.open_dataset(root, "kuka", "9.9.9")
    with pytest.raises(DataError, match="explicit version is required"):
        rlds.open_dataset(root, "fractal20220817_data", "")
    (tmp_path / "x" / "1.0.0").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no dataset_info\.json"):
        rlds.open_dataset(str(tmp_path), "x", "1.0.0")


def test_mismatched_features_lists_keys(tmp_path) -> None:
    # a "kuka" directory holding jaco_play's layout: every missing key must be named
    fx.write_dataset(str(tmp_path), "jaco_play", episodes=2)
    os.rename(tmp_path / "jaco_play", tmp_path / "kuka")
    opened = _rename_dataset(tmp_path, "jaco_play", "kuka")
    with pytest.raises(DataError) as e:
        oxe.standardize_fn(oxe.get_spec("kuka"), opened)
    msg = str(e.value)
    assert "'kuka'" in msg and "missing steps/action/rotation_delta" in msg
    assert "missing steps/observation/clip_function_input/base_pose_tool_reached" in msg


def _rename_dataset(tmp_path, old: str, new: str) -> rlds.OpenedDataset:
    """Renames files and the JSON name so `new` opens with `old`'s layout."""
    d = tmp_path / new / "0.1.0"
    for f in os.listdir(d):
        if f.startswith(old):
            os.rename(d / f, d / f.replace(old, new, 1))
    info = (d / "dataset_info.json").read_text().replace(f'"{old}"', f'"{new}"')
    (d / "dataset_info.json").write_text(info)
    return rlds.open_dataset(str(tmp_path), new, "0.1.0")


def test_mismatched_dtype_and_shape(tmp_path) -> None:
    from data.tf_setup import tfds

    F = tfds.features
    _, feats = fx.layouts()["language_table"]
    steps = dict(feats["steps"].feature)
    obs = dict(steps["observation"])
    obs["instruction"] = F.Text()  # real language_table stores int32[512] code points
    steps["observation"] = F.FeaturesDict(obs)
    steps["action"] = F.Tensor(shape=(3,), dtype=np.float32)
    bad = F.FeaturesDict({"steps": F.Dataset(steps)})
    fx.write_dataset(str(tmp_path), "language_table", episodes=2, features=bad)
    with pytest.raises(DataError) as e:
        mx.open_mixture(mx.Mixture("m", (mx.MixtureEntry("language_table"),)),
                        mx.PipelineConfig(data_root=str(tmp_path)))
    msg = str(e.value)
    assert "mismatched steps/action: expected tensor float32[2], found tensor float32[3]" in msg
    assert "mismatched steps/observation/instruction: expected tensor int32[512], found text string[]" in msg


def test_corrupted_and_missing_shard(tmp_path) -> None:
    from data import loader, windows

    d = fx.write_dataset(str(tmp_path / "data"), "demo_robot", episodes=6, shards=2)
    mix = mx.Mixture("m", (mx.MixtureEntry("demo_robot"),))
    cfg = mx.PipelineConfig(data_root=str(tmp_path / "data"), window=windows.vipra_window(), global_batch_size=4,
                            resolution=16, shuffle_buffer=8, stats_dir=str(tmp_path / "stats"))
    it = loader.make_iterator(mix, cfg, process_index=0, process_count=1)  # stats from the intact data
    shard = os.path.join(d, sorted(f for f in os.listdir(d) if "train.tfrecord" in f)[0])
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) // 2] + b"\x00garbage" * 8)
    with pytest.raises(DataError, match=r"reading failed in dataset 'demo_robot', shard .*tfrecord-00000"):
        for _ in range(50):  # fails within the first batches, never hangs
            next(it)
    shutil.rmtree(tmp_path / "stats")
    with pytest.raises(DataError, match=r"'demo_robot' .* reading failed \(corrupt shard .*tfrecord-00000"):
        loader.make_iterator(mix, cfg, process_index=0, process_count=1)
    os.remove(shard)
    with pytest.raises(DataError, match=r"shard .* is missing"):
        rlds.open_dataset(str(tmp_path / "data"), "demo_robot", "1.0.0")


def test_bridge_accepts_flat_bridge_v2_layout(tmp_path) -> None:
    _, feats = fx.layouts()["bridge_dataset"]
    fx.write_dataset(str(tmp_path), "bridge", episodes=2, features=feats, version="0.1.0")
    trajs = _trajectories(str(tmp_path), "bridge")
    assert len(trajs) == 2
    for tr in trajs:
        n = len(tr["action"])  # the OXE copy keeps step 0 (all-zero action: gripper 0 = closed)
        np.testing.assert_array_equal(tr["action"][:, 6], [0.0] + [fx.expected_open(t, n) for t in range(1, n)])
        i = int(tr["language"].decode().rsplit("ep", 1)[1])
        assert all((len(b) > 0) == fx.bridge_has_image(3, i) for b in tr["image_wrist"])
