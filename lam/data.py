"""In-memory LAM data for small RLDS datasets (the demo world): clips plus ground truth for flow and evaluation.

The shared pipeline (data/loader.py) streams LAM clips for real data; this reader additionally keeps each step's
ground truth (effector position, per-step optical flow) so the LAM can be supervised with flow and evaluated against
true motion. Everything is loaded once with `tfds.builder_from_directory` into numpy arrays (64-px demo: ~0.3 GB).

Episodes of all datasets are concatenated; `Table` holds per-step arrays and per-episode (start, length).
A sample is a clip of `clip_len` frames t, t+o, ..., t+(L-1)o (o = frame offset), clamped at the episode end.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class Table:
    """Per-step arrays (N steps in total) and per-episode index (E episodes)."""

    frames: np.ndarray  # uint8[N, R, R, 3]
    effector: np.ndarray  # float32[N, 2] table units
    flow: np.ndarray | None  # float16[N, R, R, 2] pixels, frame n → n+1 (zeros at the last step)
    action: np.ndarray  # float32[N, 2] (zeros where none)
    action_valid: np.ndarray  # bool[N]
    episode_start: np.ndarray  # int64[E]
    episode_len: np.ndarray  # int64[E]
    episode_dataset: np.ndarray  # int32[E] index into `datasets`
    episode_index: np.ndarray  # int64[E] index of the episode within its dataset split (RLDS order)
    datasets: tuple[str, ...]

    @property
    def num_steps(self) -> int:
        return int(self.frames.shape[0])


def _dataset_dir(root: str, name: str) -> str:
    base = os.path.join(root, name)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"dataset {name!r} not found under {root!r} (expected {base}/<version>)")
    versions = sorted(v for v in os.listdir(base) if os.path.isfile(os.path.join(base, v, "dataset_info.json")))
    if not versions:
        raise FileNotFoundError(f"no TFDS version dir with dataset_info.json in {base}")
    return os.path.join(base, versions[-1])


def load_episodes(root: str, name: str, split: str, *, with_flow: bool = True,
                  max_episodes: int | None = None) -> dict[str, Any]:
    """Reads one RLDS dataset split into numpy lists (one entry per episode)."""
    import tensorflow_datasets as tfds

    from data import tf_setup  # noqa: F401  (hides GPUs from TF, quiets logs)

    builder = tfds.builder_from_directory(_dataset_dir(root, name))
    if split not in builder.info.splits:
        raise KeyError(f"dataset {name!r} has no split {split!r} (has {list(builder.info.splits)})")
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ep: {"steps": ep["steps"].batch(1 << 20).get_single_element()})  # one batch per episode
    out: dict[str, list] = {k: [] for k in ("frames", "effector", "flow", "action", "action_valid")}
    for i, ep in enumerate(tfds.as_numpy(ds)):
        if max_episodes is not None and i >= max_episodes:
            break
        st = ep["steps"]
        n = len(st["is_first"])
        out["frames"].append(st["observation"]["image"])
        gt = st.get("ground_truth")
        if gt is None:
            raise KeyError(f"dataset {name!r} has no steps/ground_truth (needed for LAM flow / evaluation)")
        out["effector"].append(gt["effector_pos"].astype(np.float32))
        if with_flow:
            out["flow"].append(gt["flow"].astype(np.float16))
        if "action" in st:
            a = np.asarray(st["action"], np.float32).reshape(n, -1)[:, :2]
            out["action"].append(a)
            out["action_valid"].append(np.ones(n, bool))
        else:
            out["action"].append(np.zeros((n, 2), np.float32))
            out["action_valid"].append(np.zeros(n, bool))
    if not out["frames"]:
        raise ValueError(f"dataset {name!r} split {split!r} has no episodes")
    return out


def load_table(root: str, datasets: Sequence[str], split: str, *, with_flow: bool = True,
               max_episodes: int | None = None, cache_dir: str = "") -> Table:
    """All episodes of `datasets` (one split) as a `Table`; cached as .npz in `cache_dir` if given (no pickle)."""
    cache = ""
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        tag = "_".join(datasets) + f"_{split}_{max_episodes or 'all'}{'_flow' if with_flow else ''}"
        cache = os.path.join(cache_dir, tag + ".npz")
        if os.path.exists(cache):
            with np.load(cache, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            return Table(flow=d.pop("flow") if "flow" in d else None, datasets=tuple(str(s) for s in d.pop("names")),
                         **d)
    parts, ep_ds, ep_idx = [], [], []
    for di, name in enumerate(datasets):
        p = load_episodes(root, name, split, with_flow=with_flow, max_episodes=max_episodes)
        parts.append(p)
        ep_ds += [di] * len(p["frames"])
        ep_idx += list(range(len(p["frames"])))
    lens = np.array([len(f) for p in parts for f in p["frames"]], np.int64)
    cat = lambda k: np.concatenate([x for p in parts for x in p[k]], axis=0)
    table = Table(frames=cat("frames"), effector=cat("effector"), flow=cat("flow") if with_flow else None,
                  action=cat("action"), action_valid=cat("action_valid"),
                  episode_start=np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64), episode_len=lens,
                  episode_dataset=np.array(ep_ds, np.int32), episode_index=np.array(ep_idx, np.int64),
                  datasets=tuple(datasets))
    if cache:
        arrays = {f.name: getattr(table, f.name) for f in dataclasses.fields(table)
                  if f.name != "datasets" and getattr(table, f.name) is not None}
        np.savez(cache + ".tmp.npz", names=np.array(datasets), **arrays)
        os.replace(cache + ".tmp.npz", cache)
    return table


def clip_indices(table: Table, episodes: np.ndarray, starts: np.ndarray, clip_len: int, offset: int) -> np.ndarray:
    """Global step indices int64[B, L] of clips (episode e, start t), clamped at the episode end."""
    rel = starts[:, None] + offset * np.arange(clip_len)[None, :]
    rel = np.minimum(rel, table.episode_len[episodes][:, None] - 1)
    return table.episode_start[episodes][:, None] + rel


def compose_flow(flow: np.ndarray, idx: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Flow float32[B, R, R, 2] from frame idx to frame idx+steps, chaining per-step flows (nearest lookups)."""
    b, r = idx.shape[0], flow.shape[1]
    ys, xs = np.meshgrid(np.arange(r, dtype=np.float32), np.arange(r, dtype=np.float32), indexing="ij")
    pos = np.broadcast_to(np.stack([xs, ys], -1), (b, r, r, 2)).copy()
    start = pos.copy()
    for k in range(int(steps.max(initial=0))):
        live = (k < steps)[:, None, None, None]
        px = np.clip(np.rint(pos[..., 0]), 0, r - 1).astype(np.int64)
        py = np.clip(np.rint(pos[..., 1]), 0, r - 1).astype(np.int64)
        f = flow[(idx + k)[:, None, None], py, px].astype(np.float32)
        pos = pos + np.where(live, f, 0.0)
    return pos - start


def make_batch(table: Table, episodes: np.ndarray, starts: np.ndarray, clip_len: int, offset: int,
               with_flow: bool) -> dict[str, np.ndarray]:
    """A LAM batch: clip uint8[B, L, R, R, 3], effector float32[B, L, 2], action_valid bool[B], dataset int32[B],
    episode int64[B], start int64[B], and flow float32[B, L-1, R, R, 2] (if with_flow) between consecutive clip
    frames."""
    idx = clip_indices(table, episodes, starts, clip_len, offset)
    out = {"clip": table.frames[idx], "effector": table.effector[idx],
           "action_valid": table.action_valid[table.episode_start[episodes]],
           "dataset": table.episode_dataset[episodes], "episode": episodes.astype(np.int64),
           "start": starts.astype(np.int64)}
    if with_flow:
        if table.flow is None:
            raise ValueError("flow supervision needs a table loaded with with_flow=True")
        out["flow"] = np.stack([compose_flow(table.flow, idx[:, i], idx[:, i + 1] - idx[:, i])
                                for i in range(clip_len - 1)], axis=1)
    return out


class ClipSampler:
    """Endless seeded iterator of random clips (uniform over datasets by `weights`, then over steps).

    get_state/set_state make it resumable (the state is the number of batches drawn; batch i uses seed (seed, i))."""

    def __init__(self, table: Table, *, batch_size: int, clip_len: int, offset: int, seed: int = 0,
                 weights: Sequence[float] | None = None, with_flow: bool = False):
        self.table, self.batch_size, self.clip_len, self.offset = table, batch_size, clip_len, offset
        self.seed, self.with_flow, self.i = seed, with_flow, 0
        w = np.ones(len(table.datasets)) if weights is None else np.asarray(weights, np.float64)
        self.weights = w / w.sum()
        span = (clip_len - 1) * offset
        self.max_start = np.maximum(table.episode_len - span, 1)  # starts with a full clip when possible
        self.by_dataset = [np.flatnonzero(table.episode_dataset == d) for d in range(len(table.datasets))]

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        ds = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = np.empty(n, np.int64)
        for d in range(len(self.weights)):
            m = ds == d
            cand = self.by_dataset[d]
            # episodes weighted by their number of clip starts (uniform over steps)
            p = self.max_start[cand] / self.max_start[cand].sum()
            eps[m] = rng.choice(cand, size=int(m.sum()), p=p)
        starts = (rng.random(n) * self.max_start[eps]).astype(np.int64)
        return eps, starts

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.i])
        self.i += 1
        eps, starts = self.sample(rng, self.batch_size)
        return make_batch(self.table, eps, starts, self.clip_len, self.offset, self.with_flow)

    def get_state(self) -> dict[str, Any]:
        return {"batches": self.i}

    def set_state(self, state: dict[str, Any]) -> None:
        self.i = int(state["batches"])
