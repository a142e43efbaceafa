"""Frames for the VQGAN: RLDS episodes → uint8 frame arrays, a seeded resumable batch sampler, token caching.

TensorFlow is used only here, on the host (reading + JPEG decoding); everything jitted sees numpy / jax arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def sources(root: str, names: Sequence[str], split: str, camera: str = "") -> list[Any]:
    """Entries 'name[:version][@root]' -> data.episodes.EpisodeSource (validated up front, one line per mistake)."""
    from data import episodes

    return episodes.parse_sources(root, names, split, camera)


def iter_episodes(root: str, name: str, split: str, resolution: int, *, camera: str = "",
                  with_tfds_id: bool = False) -> Iterator[tuple[Any, ...]]:
    """(episode_id, uint8[T', R, R, 3]) in file order for `name[:version][@root]` (registry default version and
    camera), read through data/episodes.py (the registry's standardized stream). Only frames whose camera is present
    and not blank are returned (T' <= T). episode_id is the dataset's own id as text (any dtype) or "split/i".
    with_tfds_id: (episode_id, tfds_id, frames, steps int[T']), tfds_id being the record id the data pipeline
    hashes into its episode_id (data/mixture.py: to_hash_bucket_fast(tfds_id, 2**62)) and steps the kept step
    indices."""
    from data import episodes

    (src,) = sources(root, [name], split, camera)
    for ep in episodes.iter_episodes(src, resolution):
        eid = ep.source_id or f"{split}/{ep.index}"
        steps = np.flatnonzero(ep.frame_valid)
        frames = ep.frames[steps]
        yield (eid, ep.tfds_id, frames, steps) if with_tfds_id else (eid, frames)


def fingerprint(root: str, names: Sequence[str], split: str, resolution: int, camera: str = "", **extra: Any
                ) -> str:
    """Data fingerprint of a frame set (data/episodes.py: root, name, version, split, features, camera, ...)."""
    from data import episodes

    return episodes.fingerprint(sources(root, names, split, camera), resolution=resolution, **extra)


def load_frames(root: str, names: Sequence[str], split: str, resolution: int, *, stride: int = 1,
                max_frames: int = 0, camera: str = "") -> np.ndarray:
    """All valid frames (every `stride`-th step) of the datasets' split, uint8[N, R, R, 3]; `max_frames` > 0 caps N.

    names: 'name[:version][@root]'; camera: '' = each dataset's registry default ('primary', 'secondary', 'wrist').
    """
    chunks, total = [], 0
    sources(root, names, split, camera)  # every entry checked before any is read
    for name in names:
        for _, frames in iter_episodes(root, name, split, resolution, camera=camera):
            chunks.append(frames[::stride])
            total += len(chunks[-1])
            if max_frames and total >= max_frames:
                break
        if max_frames and total >= max_frames:
            break
    if not chunks or not sum(len(c) for c in chunks):
        from data.rlds import DataError

        raise DataError(f"no valid frames in {list(names)} split {split!r} under {root} (camera "
                        f"{camera or 'registry default'!r}; absent cameras and blank frames are skipped): choose "
                        "another camera (data.camera / --camera) or split")
    out = np.concatenate(chunks)
    out = out[:max_frames] if max_frames else out
    logging.info("loaded %d frames (%s, split %s, %dpx, %.0f MB)", len(out), ",".join(names), split, resolution,
                 out.nbytes / 2**20)
    return out


class FrameSampler:
    """Infinite iterator of {"frames": uint8[b, R, R, 3]}: batch i draws indices from PRNG (seed, i, process).

    State is the number of batches drawn, so `set_state` resumes bit-for-bit; frames are sampled with replacement
    across batches and without replacement within one.
    """

    def __init__(self, frames: np.ndarray, batch_size: int, seed: int, process_index: int = 0,
                 flip: bool = False):
        if len(frames) < batch_size:
            raise ValueError(f"need at least {batch_size} frames for a batch, have {len(frames)}")
        self.frames, self.batch_size, self.seed = frames, batch_size, seed
        self.process_index, self.flip, self.count = process_index, flip, 0

    def __iter__(self) -> FrameSampler:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.count, self.process_index])
        self.count += 1
        batch = self.frames[rng.choice(len(self.frames), self.batch_size, replace=False)]
        if self.flip:
            mask = rng.random(self.batch_size) < 0.5
            batch = np.where(mask[:, None, None, None], batch[:, :, ::-1], batch)
        return {"frames": batch}

    def get_state(self) -> dict[str, int]:
        return {"count": self.count}

    def set_state(self, state: dict[str, int]) -> None:
        self.count = int(state["count"])


def cache_image_tokens(encode: Any, root: str, names: Sequence[str], split: str, resolution: int, output: str,
                       batch_size: int = 64, camera: str = "") -> dict[str, Any]:
    """Encodes every frame of the datasets' split and writes an .npz keyed by episode/step.

    `encode`: uint8[b, R, R, 3] → int[b, h, w] (e.g. `vqgan.make_encode_fn(cfg, mesh)` bound to params; b is
    padded to `batch_size` so it compiles once). File arrays: `ids` int32[N, h, w], `episode` int32[N] (index into
    `episode_id`), `step` int32[N], `dataset` int32[N] (index into `dataset_name`), `episode_id` str[E]
    (episode_metadata's id, else "split/i"), `tfds_id` str[E] (the record id: the data pipeline's episode_id is
    to_hash_bucket_fast(tfds_id, 2**62), which latent_pretraining/token_cache.py joins on), `dataset_name` str[D].
    Episodes are read through data/episodes.py (registry conventions and camera; names 'name[:version][@root]');
    every step is encoded (an absent camera's frames are zeros), so rows stay contiguous per episode with steps
    0..n-1 as the join needs, and `valid` bool[N] marks the steps whose camera frame is real.
    Load with `np.load(path)` (no pickle needed).
    """
    from data import episodes

    ids, ep_idx, steps, ds_idx, ep_names, tfds_ids, valid = [], [], [], [], [], [], []
    buf: list[np.ndarray] = []

    def flush() -> None:
        if not buf:
            return
        x = np.concatenate(buf)
        n = len(x)
        pad = np.zeros((batch_size - n, *x.shape[1:]), x.dtype)
        ids.append(np.asarray(encode(np.concatenate([x, pad])))[:n].astype(np.int32))
        buf.clear()

    srcs = sources(root, names, split, camera)
    for d, src in enumerate(srcs):
        for ep in episodes.iter_episodes(src, resolution):
            frames = ep.frames
            e = len(ep_names)
            ep_names.append(ep.source_id or f"{split}/{ep.index}")
            tfds_ids.append(ep.tfds_id)
            valid.append(ep.frame_valid)
            for start in range(0, len(frames), batch_size):
                chunk = frames[start:start + batch_size]
                pending = sum(len(b) for b in buf)
                if pending + len(chunk) > batch_size:
                    flush()
                buf.append(chunk)
            ep_idx.append(np.full(len(frames), e, np.int32))
            steps.append(np.arange(len(frames), dtype=np.int32))
            ds_idx.append(np.full(len(frames), d, np.int32))
    flush()
    out = {"ids": np.concatenate(ids), "episode": np.concatenate(ep_idx), "step": np.concatenate(steps),
           "dataset": np.concatenate(ds_idx), "episode_id": np.asarray(ep_names, dtype=str),
           "tfds_id": np.asarray(tfds_ids, dtype=str), "valid": np.concatenate(valid),
           "dataset_name": np.asarray([s.name for s in srcs], dtype=str)}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, output)
    return {"frames": len(out["ids"]), "episodes": len(ep_names), "grid": tuple(out["ids"].shape[1:])}
