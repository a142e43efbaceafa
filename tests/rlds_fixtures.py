"""Writes tiny RLDS/TFDS datasets with each registered dataset's real feature layout (oxe_rlds.md §1.1).

Keys, dtypes, shapes, nested action dicts, zlib tensors and language storage follow the real datasets; only image
height/width are shrunk (the registry accepts any image size, pre-resized OXE copies differ anyway). Every episode's
language string contains its index ("... ep<i>"), so tests can match read-back episodes to the generated ones.

BridgeData V2 (flat layout) episodes look like the real ones: int32 episode_metadata/episode_id (= the index),
has_image_0/1 true, has_image_2 false, has_image_3 true only for episodes with index % 3 == 1 (absent cameras are
black frames, as in the real data), an all-zero first action, and gripper values 0.99 / 0.01 with a half-way value
0.6 at the start of the close (step 2), which Octo's scan relabels to closed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from data.metaworld import writer as metaworld_writer
from data.tf_setup import tfds

F = tfds.features
f32, i32, b = np.float32, np.int32, np.bool_


def _img(h: int, w: int, fmt: str = "jpeg") -> Any:
    return F.Image(shape=(h, w, 3), dtype=np.uint8, encoding_format=fmt)


def _t(*shape: int, dtype: Any = f32, zlib: bool = False) -> Any:
    return F.Tensor(shape=shape, dtype=dtype, encoding=F.Encoding.ZLIB if zlib else F.Encoding.NONE)


def _rlds(obs: dict, action: Any, extra_steps: dict | None = None, episode: dict | None = None) -> Any:
    steps = {"observation": obs, "is_first": F.Scalar(b), "is_last": F.Scalar(b), "is_terminal": F.Scalar(b),
             "reward": F.Scalar(f32), **(extra_steps or {})}
    if action is not None:
        steps["action"] = action
    feats: dict[str, Any] = {"steps": F.Dataset(steps)}
    feats.update(episode or {})
    return F.FeaturesDict(feats)


_RT1_ACTION = {"world_vector": _t(3), "rotation_delta": _t(3), "gripper_closedness_action": _t(1),
               "terminate_episode": _t(3, dtype=i32), "base_displacement_vector": _t(2),
               "base_displacement_vertical_rotation": _t(1)}


def layouts(res: int = 32) -> dict[str, tuple[str, Any]]:
    """name -> (version, FeaturesDict) with the real layouts (images shrunk to about `res` px)."""
    demo_steps = {"language_instruction": F.Text(), "discount": F.Scalar(f32),
                  "ground_truth": {"effector_pos": _t(2), "block_pos": _t(4, 2), "block_present": _t(4, dtype=b),
                                   "flow": _t(res, res, 2, dtype=np.float16, zlib=True)}}
    demo_meta = {"episode_metadata": {"seed": F.Scalar(np.int64), "task": F.Text(), "success": F.Scalar(b),
                                      "embodiment": F.Text(), "episode_id": F.Text()}}
    return {
        "fractal20220817_data": ("0.1.0", _rlds(
            {"image": _img(res, res * 5 // 4), "natural_language_instruction": F.Text(),
             "natural_language_embedding": _t(512), "base_pose_tool_reached": _t(7), "gripper_closed": _t(1),
             "gripper_closedness_commanded": _t(1), "height_to_bottom": _t(1), "orientation_box": _t(2, 3),
             "orientation_start": _t(4), "robot_orientation_positions_box": _t(3, 3), "rotation_delta_to_go": _t(3),
             "src_rotation": _t(4), "vector_to_go": _t(3), "workspace_bounds": _t(3, 3)},
            dict(_RT1_ACTION))),
        "kuka": ("0.1.0", _rlds(
            {"image": _img(res, res * 5 // 4), "natural_language_instruction": F.Text(),
             "natural_language_embedding": _t(512), "clip_function_input/base_pose_tool_reached": _t(7, zlib=True),
             "clip_function_input/workspace_bounds": _t(3, 3, zlib=True), "gripper_closed": _t(1, zlib=True),
             "height_to_bottom": _t(1, zlib=True), "task_id": _t(1, zlib=True)},
            dict(_RT1_ACTION), episode={"success": F.Scalar(b)})),
        "bridge_dataset": ("1.0.0", _rlds(
            {**{f"image_{k}": _img(res, res) for k in range(4)}, "state": _t(7)}, _t(7),
            {"language_instruction": F.Text(), "discount": F.Scalar(f32)},
            {"episode_metadata": {"file_path": F.Text(), "has_language": F.Scalar(b), "episode_id": F.Scalar(i32),
                                  **{f"has_image_{k}": F.Scalar(b) for k in range(4)}}})),
        "bridge": ("0.1.0", _rlds(
            {"image": _img(res, res * 4 // 3), "natural_language_instruction": F.Text(),
             "natural_language_embedding": _t(512), "state": _t(7)},
            {"open_gripper": F.Scalar(b), "rotation_delta": _t(3), "terminate_episode": F.Scalar(f32),
             "world_vector": _t(3)})),
        "language_table": ("0.0.1", _rlds(
            {"rgb": _img(res, res * 16 // 9), "instruction": _t(512, dtype=i32), "effector_translation": _t(2),
             "effector_target_translation": _t(2)}, _t(2))),
        "taco_play": ("0.1.0", _rlds(
            {"rgb_static": _img(res, res * 4 // 3), "rgb_gripper": _img(res // 2, res // 2),
             "depth_static": _t(res, res * 4 // 3), "depth_gripper": _t(res // 2, res // 2),
             "natural_language_instruction": F.Text(), "structured_language_instruction": F.Text(),
             "natural_language_embedding": _t(512), "robot_obs": _t(15)},
            {"actions": _t(7), "rel_actions_world": _t(7), "rel_actions_gripper": _t(7),
             "terminate_episode": F.Scalar(f32)})),
        "jaco_play": ("0.1.0", _rlds(
            {"image": _img(res, res), "image_wrist": _img(res, res), "end_effector_cartesian_pos": _t(7),
             "end_effector_cartesian_velocity": _t(6), "joint_pos": _t(8), "natural_language_instruction": F.Text(),
             "natural_language_embedding": _t(512)},
            {"world_vector": _t(3), "gripper_closedness_action": _t(1), "terminate_episode": _t(3, dtype=i32)})),
        "demo_robot": ("1.0.0", _rlds({"image": _img(res, res), "state": _t(2)}, _t(2), demo_steps, demo_meta)),
        "demo_human": ("1.0.0", _rlds({"image": _img(res, res)}, None, demo_steps, demo_meta)),
        "ssv2": ("1.0.0", _rlds({"image": _img(res, res)}, None, {"language_instruction": F.Text()},
                                {"episode_metadata": {"video_id": F.Text()}})),
        # Meta-World: the writer's own feature specs (data/metaworld/writer.py), so the fixture cannot drift from it
        "metaworld_robot": ("1.0.0", metaworld_writer.features(res, True)),
        "metaworld_video": ("1.0.0", metaworld_writer.features(res, False)),
    }


def _random_leaf(feat: Any, rng: np.random.Generator, t: int) -> Any:
    if isinstance(feat, F.Image):
        h, w, c = feat.shape
        base = rng.integers(0, 256, size=(1, 1, c))
        return np.clip(base + rng.integers(-20, 20, size=(h, w, c)), 0, 255).astype(np.uint8)
    if isinstance(feat, F.Text):
        return f"text {t}"
    dtype = np.dtype(feat.np_dtype)
    if dtype == np.bool_:
        return rng.random(feat.shape) < 0.5 if feat.shape else bool(rng.random() < 0.5)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 3, size=feat.shape).astype(dtype) if feat.shape else dtype.type(rng.integers(0, 3))
    return rng.normal(size=feat.shape).astype(dtype) if feat.shape else dtype.type(rng.normal())


def _fill(feat: Any, rng: np.random.Generator, t: int) -> Any:
    if isinstance(feat, F.FeaturesDict):
        return {k: _fill(feat[k], rng, t) for k in feat.keys()}  # noqa: SIM118
    return _random_leaf(feat, rng, t)


def _gripper_rel(t: int, n: int) -> float:
    """Relative gripper command: close (+1) at step 2, open (-1) at step n-2, else 0 (RT-1 style)."""
    return 1.0 if t == 2 else (-1.0 if t == n - 2 else 0.0)


def expected_open(t: int, n: int) -> float:
    """Absolute gripper (1 = open) implied by `_gripper_rel`."""
    return 0.0 if 2 <= t < n - 2 else 1.0


def bridge_has_image(k: int, index: int) -> bool:
    """Which cameras a Bridge-layout fixture episode has (see the module doc)."""
    return k in (0, 1) or (k == 3 and index % 3 == 1)


def bridge_gripper(t: int, n: int) -> float:
    """Raw Bridge gripper of fixture step t (before dropping step 0): settled 0.99 / 0.01, 0.6 half-way at t = 2."""
    return 0.6 if t == 2 else 0.98 * expected_open(t, n) + 0.01


def make_episode(name: str, features: Any, index: int, length: int, seed: int) -> dict:
    """One episode dict for `features`, with dataset-specific semantics (gripper, language, flags)."""
    rng = np.random.default_rng(seed * 1000 + index)
    steps_feat = features["steps"].feature
    text = f"pick up the block ep{index}"
    steps = []
    for t in range(length):
        s = _fill(steps_feat, rng, t)
        s["is_first"], s["is_last"], s["is_terminal"] = t == 0, t == length - 1, t == length - 1
        obs = s["observation"]
        if "natural_language_instruction" in obs:
            obs["natural_language_instruction"] = text
        if "language_instruction" in s:
            s["language_instruction"] = text
        if name == "language_table" and not isinstance(steps_feat["observation"]["instruction"], F.Text):
            codes = np.zeros(512, np.int32)
            codes[: len(text)] = [ord(c) for c in text]
            obs["instruction"] = codes
        if isinstance(s.get("action"), dict) and "gripper_closedness_action" in s["action"]:
            s["action"]["gripper_closedness_action"] = np.array([_gripper_rel(t, length)], np.float32)
        if name in ("bridge_dataset", "bridge") and not isinstance(s["action"], dict):
            s["action"][6] = np.float32(bridge_gripper(t, length))
            if t == 0:
                s["action"][:] = 0.0  # BridgeData V2's first action is all zero
            for k in range(4):
                if not bridge_has_image(k, index):
                    obs[f"image_{k}"] = np.zeros_like(obs[f"image_{k}"])
        elif name == "bridge":
            s["action"]["open_gripper"] = bool(expected_open(t, length))
        if name == "taco_play":
            s["action"]["rel_actions_world"][6] = np.float32(2 * expected_open(t, length) - 1)
        if name == "demo_robot":
            obs["state"] = np.array([0.1 * index, 0.01 * t], np.float32)
            s["action"] = np.zeros(2, np.float32) if t == length - 1 else np.array([0.01, -0.02 * index], np.float32)
        if "flow" in s.get("ground_truth", {}):
            s["ground_truth"]["flow"] = np.zeros(steps_feat["ground_truth"]["flow"].shape, np.float16)
        steps.append(s)
    ep: dict[str, Any] = {"steps": steps}
    for key in features.keys():  # noqa: SIM118
        if key != "steps":
            ep[key] = _fill(features[key], rng, 0)
    if "success" in ep:
        ep["success"] = index % 2 == 0
    if "episode_metadata" in ep:
        meta = ep["episode_metadata"]
        for k in ("episode_id", "file_path", "video_id"):
            if k in meta:
                meta[k] = f"ep{index}" if isinstance(features["episode_metadata"][k], F.Text) else np.int32(index)
        for k in range(4):
            if f"has_image_{k}" in meta:
                meta[f"has_image_{k}"] = bridge_has_image(k, index)
        if "embodiment" in meta:
            meta["embodiment"] = "human" if name == "demo_human" else "robot"
            meta["task"] = "push"
    return ep


def write_dataset(root: str, name: str, *, episodes: int = 6, lengths: tuple[int, int] = (6, 12), seed: int = 0,
                  splits: tuple[str, ...] = ("train",), shards: int = 2, res: int = 32,
                  version: str | None = None, features: Any = None) -> str:
    """Writes `<root>/<name>/<version>` and returns that directory. Episode i has length lo + i % (hi - lo + 1)."""
    default_version, default_features = layouts(res)[name]
    version = version or default_version
    features = features or default_features
    lo, hi = lengths
    split_data = {}
    for s_i, split in enumerate(splits):
        offset = 1000 * s_i
        split_data[split] = [(f"ep{offset + i}", make_episode(name, features, offset + i, lo + i % (hi - lo + 1), seed))
                             for i in range(episodes)]
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=version, features=features, split_datasets=split_data, data_dir=root,
        download_config=tfds.download.DownloadConfig(num_shards=shards))
    return os.path.join(root, name, version)


_ROOTS: dict[str, str] = {}


def shared_root(kind: str = "oxe") -> str:
    """Process-wide cached fixture roots (written once per test session, removed at exit).

    'oxe': every registered layout, 6 train episodes (lengths 6..12), 2 shards.
    'demo': demo_robot / demo_human with 16 train + 16 val episodes (lengths 8..20), 3 shards.
    """
    if kind not in _ROOTS:
        import atexit
        import shutil
        import tempfile

        tfds.disable_progress_bar()
        root = tempfile.mkdtemp(prefix=f"rlds_{kind}_")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        if kind == "oxe":
            for name in layouts():
                write_dataset(root, name)
        else:
            for name in ("demo_robot", "demo_human"):
                write_dataset(root, name, episodes=16, lengths=(8, 20), splits=("train", "val"), shards=3)
        _ROOTS[kind] = root
    return _ROOTS[kind]
