"""Per-dataset action/proprio statistics (one pass, cached as JSON) and masked normalization (apply + invert).

Stats JSON (one file per dataset, name + feature-spec hash in the file name):
  {"dataset", "features_hash", "num_trajectories", "num_transitions", "num_action_transitions",
   "action": {"mean","std","min","max","q01","q99": [7]}, "proprio": {...: [8]},
   "action_mask": [7] bool, "proprio_mask": [8] bool}
Masked dimensions (the gripper, padded proprio dims) pass through unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from data import tf_setup
from data.oxe import ACTION_DIM, PROPRIO_DIM, DatasetSpec
from data.rlds import DataError, OpenedDataset, find_corrupt_shard, tf_error_line

tf = tf_setup.tf
STATS_FORMAT = 1
MODES = ("normal", "bounds", "none")
_EPS = 1e-8


def _summary(x: np.ndarray, dim: int) -> dict[str, list[float]]:
    if x.shape[0] == 0:
        z, o = np.zeros(dim), np.ones(dim)
        return {"mean": z.tolist(), "std": o.tolist(), "min": z.tolist(), "max": z.tolist(),
                "q01": (-o).tolist(), "q99": o.tolist()}
    x = x.astype(np.float64)
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(), "max": x.max(0).tolist(),
            "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist()}


MAX_TRANSITIONS = 2_000_000


def compute_stats(trajectories: Any, spec: DatasetSpec, features_hash: str,
                  max_transitions: int = MAX_TRANSITIONS, progress: Any = None) -> dict[str, Any]:
    """One pass over standardized trajectories (finite tf.data.Dataset). Caps at `max_transitions` (first N).
    `progress(n_transitions)` is called after each trajectory (e.g. a tqdm bar's update)."""
    actions, proprios, n_traj, n_trans = [], [], 0, 0
    for traj in trajectories.as_numpy_iterator():
        valid = traj["action_valid"]
        actions.append(traj["action"][valid])
        proprios.append(traj["proprio"])
        n_traj += 1
        n_trans += len(valid)
        if progress is not None:
            progress(len(valid))
        if n_trans >= max_transitions:
            break
    act = np.concatenate(actions) if actions else np.zeros((0, ACTION_DIM), np.float32)
    pro = np.concatenate(proprios) if proprios else np.zeros((0, PROPRIO_DIM), np.float32)
    return {
        "format": STATS_FORMAT, "dataset": spec.name, "features_hash": features_hash,
        "num_trajectories": n_traj, "num_transitions": n_trans, "num_action_transitions": int(act.shape[0]),
        "action": _summary(act, ACTION_DIM), "proprio": _summary(pro, PROPRIO_DIM),
        "action_mask": list(spec.action_norm_mask) if spec.has_actions else [False] * ACTION_DIM,
        "proprio_mask": [i < spec.proprio_dim for i in range(PROPRIO_DIM)],
    }


def stats_path(opened: OpenedDataset, spec: DatasetSpec, split: str, cache_dir: str | None) -> str:
    """Cache file `<dir>/dataset_statistics_<name>_<hash>.json`.

    dir: cache_dir, else the dataset dir (if writable), else ~/.cache/latent_vla/stats.
    """
    key = hashlib.sha256(f"{STATS_FORMAT}|{spec.name}|{spec.conventions()}|{opened.features_hash()}|{split}".encode())
    fname = f"dataset_statistics_{spec.name}_{key.hexdigest()[:16]}.json"
    if cache_dir is None:
        cache_dir = opened.path if os.access(opened.path, os.W_OK) else os.path.expanduser(
            os.path.join("~", ".cache", "latent_vla", "stats"))
    return os.path.join(cache_dir, fname)


def load_cached(opened: OpenedDataset, spec: DatasetSpec, split: str, cache_dir: str | None = None
                ) -> dict[str, Any] | None:
    """The cached stats of (dataset, split, feature spec, conventions), or None when there are none (or stale)."""
    path = stats_path(opened, spec, split, cache_dir)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stats = json.load(f)
    if stats.get("format") == STATS_FORMAT and stats.get("features_hash") == opened.features_hash():
        return stats
    return None


def load_or_compute(opened: OpenedDataset, spec: DatasetSpec, split: str, trajectories_fn: Any,
                    cache_dir: str | None = None, *, recompute: bool = False,
                    max_transitions: int = MAX_TRANSITIONS, progress: Any = None) -> dict[str, Any]:
    """Reads cached stats JSON or computes them with `trajectories_fn()` (a finite dataset) and writes the cache
    (`python -m data.stats` runs the same computation offline, once, for large datasets)."""
    path = stats_path(opened, spec, split, cache_dir)
    cached = None if recompute else load_cached(opened, spec, split, cache_dir)
    if cached is not None:
        return cached
    try:
        stats = compute_stats(trajectories_fn(), spec, opened.features_hash(), max_transitions, progress)
    except tf.errors.OpError as e:
        bad = find_corrupt_shard(opened) if isinstance(e, tf.errors.DataLossError) else None
        where = f" (corrupt shard {bad})" if bad else ""
        raise DataError(f"dataset {spec.name!r} at {opened.path}: reading failed{where} ({type(e).__name__}): "
                        f"{tf_error_line(e)}") from None
    if stats["num_trajectories"] == 0:
        raise DataError(f"dataset {spec.name!r} at {opened.path}: split {split!r} has no usable episodes "
                        "(empty split, or all filtered out)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(stats, f, indent=1)
    os.replace(tmp, path)
    return stats


def _arrays(stats: Mapping[str, Any], key: str, mode: str) -> dict[str, np.ndarray]:
    """Stats of ``key`` as float32 arrays plus its mask; validates ``mode``."""
    if mode not in MODES:
        raise DataError(f"unknown normalization mode {mode!r}; expected one of {MODES}")
    if mode == "none":
        return {}
    s = {k: np.asarray(v, np.float32) for k, v in stats[key].items()}
    s["mask"] = np.asarray(stats[f"{key}_mask"], bool)
    return s


def normalize(x: Any, stats: Mapping[str, Any], key: str, mode: str) -> Any:
    """x[..., D] -> normalized (tf or numpy). 'normal': (x-mean)/(std+eps); 'bounds': q01/q99 -> [-1, 1] clipped."""
    s = _arrays(stats, key, mode)
    if mode == "none":
        return x
    xp = tf if isinstance(x, tf.Tensor) else np
    if mode == "normal":
        y = (x - s["mean"]) / (s["std"] + _EPS)
    else:
        rng = s["q99"] - s["q01"]
        ok = rng > 1e-6
        y = 2.0 * (x - s["q01"]) / np.where(ok, rng, 1.0) - 1.0
        y = xp.where(ok, tf.clip_by_value(y, -1.0, 1.0) if xp is tf else np.clip(y, -1.0, 1.0), 0.0)
    return xp.where(s["mask"], y, x)


def unnormalize(y: Any, stats: Mapping[str, Any], key: str, mode: str) -> Any:
    """Inverse of `normalize` (exact for 'normal'; for 'bounds' exact inside [q01, q99])."""
    s = _arrays(stats, key, mode)
    if mode == "none":
        return y
    xp = tf if isinstance(y, tf.Tensor) else np
    if mode == "normal":
        x = y * (s["std"] + _EPS) + s["mean"]
    else:
        x = (y + 1.0) / 2.0 * (s["q99"] - s["q01"]) + s["q01"]
    return xp.where(s["mask"], x, y)


def normalize_trajectory(traj: dict, stats: Mapping[str, Any], mode: str) -> dict:
    """tf map fn: normalizes `action` (valid steps only) and `proprio` of a standardized trajectory."""
    out = dict(traj)
    act = normalize(traj["action"], stats, "action", mode)
    out["action"] = tf.where(traj["action_valid"][:, None], act, traj["action"])
    out["proprio"] = normalize(traj["proprio"], stats, "proprio", mode)
    return out
