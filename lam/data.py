"""In-memory LAM data for small datasets: a cache of the standardized episode stream plus optional ground truth.

Episodes are read through the one episode reader (data/episodes.py: `<root>/<name>/<version>` with the configured
version, the registry's standardization, conventions and camera), decoded at the LAM's resolution and kept as numpy
arrays (64-px demo: ~0.3 GB). Ground truth for the evaluation probes is the effector's position in pixels of the frames
the LAM reads (x right, y down, pixel i spanning [i, i + 1)), from whichever leaf of `EFFECTOR_TRUTH` a dataset has:
the demo world's `effector_pos` (table units, converted here) or Meta-World's `hand_pixel` (already in pixels of the
stored image); both are rescaled when the LAM reads frames at another resolution. Only the demo world has per-step
optical flow (flow supervision); datasets without it need an estimated target (`loss.flow_target='block_match'`
or `'farneback'`), and datasets with no effector truth at all (real data) get zeros and `Table.ground_truth` False.

The .npz cache (`cache_dir`) is keyed by `table_fingerprint` (root, name, version, split, feature spec, registry
conventions, camera, resolution, ground truth, episode cap, window), so a changed root or version never reuses
stale arrays. Episodes of all datasets are concatenated; `Table` holds per-step arrays and per-episode (start,
length). A sample is a clip of `clip_len` frames t, t+o, ..., t+(L-1)o (o = frame offset), clamped at the episode end;
with `context` = 1 (`model.decoder.context`) the clip leads with one more frame, t − o clamped to the episode's first
frame (so at an episode's start the context motion is zero). The ground truth (effector, flow) always describes the
clip's own `clip_len` frames, never the context frame.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from data.demo import render as demo_render
from lam.config import context_frames

GT_EFFECTOR, GT_FLOW = "steps/ground_truth/effector_pos", "steps/ground_truth/flow"
GT_HAND_PIXEL = "steps/ground_truth/hand_pixel"
STORED_IMAGE = "steps/observation/image"  # the frames the effector truth refers to (demo world and Meta-World)


def _identity_pixels(pos: np.ndarray, resolution: int) -> np.ndarray:
    return np.asarray(pos, np.float32)


# effector ground-truth leaf -> (values float[T, 2], stored image side) -> pixels of the stored image; first match wins
EFFECTOR_TRUTH: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    GT_EFFECTOR: demo_render.table_to_pixels,  # demo world: table units (data/demo/render.py)
    GT_HAND_PIXEL: _identity_pixels,  # Meta-World: projected through the camera at generation (data/metaworld/env.py)
}


@dataclasses.dataclass
class Table:
    """Per-step arrays (N steps in total) and per-episode index (E episodes)."""

    frames: np.ndarray  # uint8[N, R, R, 3]
    effector: np.ndarray  # float32[N, 2] pixels of `frames` (x right, y down; zeros without ground truth)
    flow: np.ndarray | None  # float16[N, R, R, 2] pixels, frame n → n+1 (zeros at the last step)
    action: np.ndarray  # float32[N, 2] first two standardized action dims (zeros where none)
    action_valid: np.ndarray  # bool[N]
    episode_start: np.ndarray  # int64[E]
    episode_len: np.ndarray  # int64[E]
    episode_dataset: np.ndarray  # int32[E] index into `datasets`
    episode_index: np.ndarray  # int64[E] index of the episode within its dataset split (RLDS order)
    datasets: tuple[str, ...]
    ground_truth: np.ndarray | None = None  # bool[E]: effector is real (demo world, Meta-World)

    @property
    def num_steps(self) -> int:
        return int(self.frames.shape[0])

    @property
    def has_ground_truth(self) -> bool:
        return self.ground_truth is None or bool(np.all(self.ground_truth))


def sources(root: str, datasets: Sequence[str], split: str, camera: str = "") -> list[Any]:
    """'name[:version][@root]' entries -> EpisodeSources; every entry checked first, one line per mistake."""
    from data import episodes

    return episodes.parse_sources(root, datasets, split, camera)


def records_flow(root: str, datasets: Sequence[str], split: str, camera: str = "") -> bool:
    """Whether every dataset entry records per-step ground-truth flow (GT_FLOW: the demo world only)."""
    from data import episodes

    return all(GT_FLOW in episodes.open_source(s)[2].features for s in sources(root, datasets, split, camera))


def load_episodes(root: str, name: str, split: str, *, with_flow: bool = True, max_episodes: int | None = None,
                  resolution: int = 0, camera: str = "") -> dict[str, Any]:
    """Reads one dataset split (`name[:version][@root]`) into numpy lists (one entry per episode).

    Ground truth is read when the dataset has it; with_flow=True on a dataset without per-step flow is a one-line
    DataError naming the fix. resolution 0: the camera's native (square) size.
    """
    from data import episodes
    from data.rlds import DataError

    (src,) = sources(root, [name], split, camera)
    _, _, opened, _ = episodes.open_source(src)
    truth = next((k for k in EFFECTOR_TRUTH if k in opened.features), None)
    if with_flow and GT_FLOW not in opened.features:
        raise DataError(f"dataset {src.name!r} has no {GT_FLOW} (ground-truth flow exists only in the demo world): "
                        "set loss.flow_target='block_match' (or 'farneback') or turn the flow loss off")
    flow_size = tuple(opened.features[GT_FLOW].shape[:2]) if with_flow else ()
    if with_flow and resolution > 0 and flow_size != (resolution, resolution):
        # the flow is in the stored frames' pixels; resizing the frames alone would train against the wrong targets
        raise DataError(f"dataset {src.name!r} stores ground-truth flow at {flow_size[0]}x{flow_size[1]} px but the "
                        f"LAM reads frames at {resolution} px: set model.image_size={flow_size[0]} or "
                        "loss.flow_target='farneback'")
    extras = ((truth,) if truth else ()) + ((GT_FLOW,) if with_flow else ())
    if truth:  # the truth is in pixels of the stored image; the LAM may read the frames at another size
        stored = int(opened.features[STORED_IMAGE].shape[0])
        scale = (resolution or stored) / stored
    out: dict[str, list] = {k: [] for k in ("frames", "effector", "flow", "action", "action_valid")}
    out["ground_truth"] = []
    valid_frames = 0
    for ep in episodes.iter_episodes(src, resolution, extras=extras, max_episodes=max_episodes):
        n = len(ep)
        valid_frames += int(ep.frame_valid.sum())
        out["frames"].append(ep.frames)
        out["effector"].append(EFFECTOR_TRUTH[truth](ep.extras[truth], stored) * np.float32(scale) if truth
                               else np.zeros((n, 2), np.float32))
        if with_flow:
            out["flow"].append(ep.extras[GT_FLOW].astype(np.float16))
        out["action"].append(ep.action[:, :2].astype(np.float32))
        out["action_valid"].append(ep.action_valid)
        out["ground_truth"].append(truth is not None)
    if not out["frames"]:
        raise DataError(f"dataset {name!r} split {split!r} has no episodes")
    episodes.require_valid_frames(valid_frames, src)
    return out


def table_fingerprint(root: str, datasets: Sequence[str], split: str, *, with_flow: bool,
                      max_episodes: int | None, resolution: int, camera: str = "", window: Any = None) -> str:
    """Fingerprint of a Table's contents (data/episodes.py fingerprint + resolution, flow, cap, window)."""
    from data import episodes

    return episodes.fingerprint(sources(root, datasets, split, camera), resolution=resolution, with_flow=with_flow,
                                max_episodes=max_episodes or 0, window=window,
                                table="lam-table-v3")  # v3: effector in pixels (v2: demo table units)


def config_fingerprint(config: Any, split: str | None = None) -> str:
    """Data fingerprint of a LAM run (`loop.run(data_fingerprint=...)`, refused on resume if changed): the sources
    (root, name, version, split, features, conventions, camera) + resolution, source, clip window, flow target,
    episode cap, weights and batch size (the sampler's state is a batch count: another batch size is another
    stream). `config`: the LAM ConfigDict (data.*, model.image_size, loss.*)."""
    from data import episodes

    d = config.data
    split = split or d.train_split
    camera = str(d.camera)
    srcs = sources(d.root, d.datasets, split, camera)
    return episodes.fingerprint(
        srcs, resolution=int(config.model.image_size), source=str(d.source), clip_len=int(d.clip_len),
        offset=int(d.offset), weights=[float(w) for w in d.weights], batch_size=int(d.batch_size),
        max_episodes=int(d.max_episodes or 0),
        flow_target=str(config.loss.get("flow_target", "ground_truth")), flow=bool(config.model.flow_head),
        table="lam-table-v2", **context_key(config), **action_key(config))


def action_key(config: Any) -> dict[str, int]:
    """{'action_episodes': n[, 'action_share': f]} when the LAM reads actions (loss.action_weight > 0), else {}
    (every run without action supervision keeps its fingerprint)."""
    if config.loss.get("action_weight", 0.0) <= 0:
        return {}
    share = float(config.data.get("action_share", 0.0))
    return {"action_episodes": int(config.data.action_episodes), **({"action_share": share} if share else {})}


def context_key(config: Any) -> dict[str, int]:
    """{'context': n} when the clips lead with n context frames (model.decoder.context), else {} (so the fingerprint
    of every run without context frames stays what it was). The .npz table cache needs no such key: it holds the
    per-step arrays, which clip_len, offset and context do not change (they only pick the sampled indices)."""
    n = context_frames(config)
    return {"context": n} if n else {}


def load_table(root: str, datasets: Sequence[str], split: str, *, with_flow: bool = True,
               max_episodes: int | None = None, cache_dir: str = "", resolution: int = 0, camera: str = "",
               window: Any = None) -> Table:
    """All episodes of `datasets` (one split; entries 'name[:version][@root]') as a `Table`.

    Cached as .npz in `cache_dir` (no pickle) under `table_fingerprint`, so a changed root, version, feature spec,
    camera, resolution or window reads the data again instead of training on stale arrays.
    """
    cache = ""
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        key = table_fingerprint(root, datasets, split, with_flow=with_flow, max_episodes=max_episodes,
                                resolution=resolution, camera=camera, window=window)
        cache = os.path.join(cache_dir, f"lam_table_{split}_{key}.npz")
        if os.path.exists(cache):
            with np.load(cache, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            return Table(flow=d.pop("flow") if "flow" in d else None, datasets=tuple(str(s) for s in d.pop("names")),
                         **d)
    parts, ep_ds, ep_idx = [], [], []
    for di, name in enumerate(datasets):
        p = load_episodes(root, name, split, with_flow=with_flow, max_episodes=max_episodes, resolution=resolution,
                          camera=camera)
        parts.append(p)
        ep_ds += [di] * len(p["frames"])
        ep_idx += list(range(len(p["frames"])))
    lens = np.array([len(f) for p in parts for f in p["frames"]], np.int64)
    cat = lambda k: np.concatenate([x for p in parts for x in p[k]], axis=0)
    table = Table(frames=cat("frames"), effector=cat("effector"), flow=cat("flow") if with_flow else None,
                  action=cat("action"), action_valid=cat("action_valid"),
                  episode_start=np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64), episode_len=lens,
                  episode_dataset=np.array(ep_ds, np.int32), episode_index=np.array(ep_idx, np.int64),
                  datasets=tuple(datasets), ground_truth=np.array([g for p in parts for g in p["ground_truth"]], bool))
    if cache:
        arrays = {f.name: getattr(table, f.name) for f in dataclasses.fields(table)
                  if f.name != "datasets" and getattr(table, f.name) is not None}
        np.savez(cache + ".tmp.npz", names=np.array(datasets), **arrays)
        os.replace(cache + ".tmp.npz", cache)
    return table


def clip_indices(table: Table, episodes: np.ndarray, starts: np.ndarray, clip_len: int, offset: int,
                 context: int = 0) -> np.ndarray:
    """Global step indices int64[B, context + L] of clips (episode e, start t): `context` leading frames
    t − context·o, ..., t − o clamped at the episode's first frame, then t, t+o, ..., t+(L-1)o clamped at its end."""
    rel = starts[:, None] + offset * np.arange(-context, clip_len)[None, :]
    rel = np.clip(rel, 0, table.episode_len[episodes][:, None] - 1)
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
        at = np.minimum(idx + k, len(flow) - 1)  # rows already done (k >= steps) are masked below: no read past the end
        f = flow[at[:, None, None], py, px].astype(np.float32)
        pos = pos + np.where(live, f, 0.0)
    return pos - start


def make_batch(table: Table, episodes: np.ndarray, starts: np.ndarray, clip_len: int, offset: int,
               with_flow: bool, context: int = 0) -> dict[str, np.ndarray]:
    """A LAM batch: clip uint8[B, context + L, R, R, 3] (`context` leading frames before frame t, see
    clip_indices), effector float32[B, L, 2], action_valid bool[B], dataset int32[B], episode int64[B],
    start int64[B], and flow float32[B, L-1, R, R, 2] (if with_flow) between consecutive clip frames. The effector
    and flow are those of the L clip frames t, ..., t+(L-1)o only (the probes' truth is the transition's)."""
    full = clip_indices(table, episodes, starts, clip_len, offset, context)
    idx = full[:, context:]
    out = {"clip": table.frames[full], "effector": table.effector[idx],
           "action_valid": table.action_valid[table.episode_start[episodes]],
           "dataset": table.episode_dataset[episodes], "episode": episodes.astype(np.int64),
           "start": starts.astype(np.int64)}
    if with_flow:
        if table.flow is None:
            raise ValueError("flow supervision needs a table loaded with with_flow=True")
        out["flow"] = np.stack([compose_flow(table.flow, idx[:, i], idx[:, i + 1] - idx[:, i])
                                for i in range(clip_len - 1)], axis=1)
    return out


def action_cumsum(table: Table) -> np.ndarray:
    """float64[N + 1, 2]: row n = the sum of the table's actions over global steps 0 .. n − 1 (transition_actions'
    input, computed once per table)."""
    return np.concatenate([np.zeros((1, table.action.shape[1]), np.float64), np.cumsum(table.action, 0)])


def transition_actions(cum: np.ndarray, idx: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per transition of the clips idx int64[B, L] (global step indices): the mean of the table's actions over
    the steps idx[:, i] .. idx[:, i+1] − 1 (from cum = action_cumsum(table)), divided by `scale` float[2] →
    float32[B, L-1, 2]. A transition the episode's end clamped to no steps reads 0."""
    steps = (idx[:, 1:] - idx[:, :-1])[..., None]
    total = cum[idx[:, 1:]] - cum[idx[:, :-1]]
    return (total / np.maximum(steps, 1) / scale).astype(np.float32)


def action_labels(table: Table, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Which episodes' actions a LAM trained with action supervision may read (bool[E]: episodes with actions, and
    of those only the first `episodes` of each dataset in file order; 0 = all of them) and the per-dimension scale
    float[2] of their actions (std over their steps, floored at 1e-6), so the targets are in units of one std."""
    has = table.action_valid[table.episode_start]
    labelled = has & ((table.episode_index < episodes) if episodes > 0 else True)
    if not labelled.any():
        raise ValueError("action supervision (loss.action_weight > 0) found no episode with actions in "
                         f"{', '.join(table.datasets)}: train on a dataset with actions or set loss.action_weight=0")
    rows = np.concatenate([np.arange(s, s + n) for s, n in
                           zip(table.episode_start[labelled], table.episode_len[labelled], strict=True)])
    return labelled, np.maximum(table.action[rows].std(axis=0), 1e-6).astype(np.float64)


class ClipSampler:
    """Endless seeded iterator of random clips (uniform over datasets by `weights`, then over steps; `context`
    leading frames per clip as in make_batch: the starts drawn, hence the transitions, do not depend on it).

    `action_episodes` (None = off): batches also carry 'action' float32[B, L-1, 2] (transition_actions, in stds) and
    'action_mask' bool[B] (the clip's episode is one action_labels lets the LAM read; its argument is this value);
    `action_share` > 0: the first round(share·B) clips of every batch come from labelled episodes (uniform over their
    steps), so a few labelled episodes still reach every batch.

    get_state/set_state make it resumable (the state is the number of batches drawn; batch i uses seed (seed, i))."""

    def __init__(self, table: Table, *, batch_size: int, clip_len: int, offset: int, seed: int = 0,
                 weights: Sequence[float] | None = None, with_flow: bool = False, context: int = 0,
                 action_episodes: int | None = None, action_share: float = 0.0):
        self.table, self.batch_size, self.clip_len, self.offset = table, batch_size, clip_len, offset
        self.seed, self.with_flow, self.context, self.i = seed, with_flow, context, 0
        self.labels = None if action_episodes is None else action_labels(table, int(action_episodes))
        self.n_labelled = round(action_share * batch_size) if self.labels is not None else 0
        self.action_cum = action_cumsum(table) if self.labels is not None else None
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
            eps[m] = self._episodes(rng, self.by_dataset[d], int(m.sum()))
        return eps, self._starts(rng, eps)

    def _episodes(self, rng: np.random.Generator, cand: np.ndarray, n: int) -> np.ndarray:
        """n episodes of `cand`, each weighted by its number of clip starts (so steps are drawn uniformly)."""
        return rng.choice(cand, size=n, p=self.max_start[cand] / self.max_start[cand].sum())

    def _starts(self, rng: np.random.Generator, eps: np.ndarray) -> np.ndarray:
        return (rng.random(len(eps)) * self.max_start[eps]).astype(np.int64)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.i])
        self.i += 1
        eps, starts = self.sample(rng, self.batch_size)
        if self.n_labelled:  # the batch's first clips from the labelled episodes
            k = self.n_labelled
            eps[:k] = self._episodes(rng, np.flatnonzero(self.labels[0]), k)
            starts[:k] = self._starts(rng, eps[:k])
        out = make_batch(self.table, eps, starts, self.clip_len, self.offset, self.with_flow, self.context)
        if self.labels is not None:
            labelled, scale = self.labels
            idx = clip_indices(self.table, eps, starts, self.clip_len, self.offset)
            out["action"], out["action_mask"] = transition_actions(self.action_cum, idx, scale), labelled[eps]
        return out

    def get_state(self) -> dict[str, Any]:
        return {"batches": self.i}

    def set_state(self, state: dict[str, Any]) -> None:
        self.i = int(state["batches"])
