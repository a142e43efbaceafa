"""Offline token caches joined onto host batches, so the train step skips the frozen VQGAN / LAM.

    join = TokenCacheJoin(image="runs/tokens/train.npz", latent="runs/lam_labels", datasets=("demo_robot", ...),
                          window=setup.window, spec=setup.spec)
    batch = join(batch)   # + frame_ids i32[B, W, g²], future_ids i32[B, g²], latent_ids i32[B, S, C], latent_valid

Inputs (host numpy batch of the data pipeline): dataset_index int32[B] (index into `datasets`, the mixture order),
episode_id int64[B] (to_hash_bucket_fast(tfds_id, 2**62), data/mixture.py), step int32[B].

Caches:
  image  (scripts/cache_image_tokens.py → vqgan_data.cache_image_tokens): one .npz per split with ids int32[N, h, w],
         episode int32[N] → tfds_id str[E], step int32[N], dataset int32[N] → dataset_name str[D].
  latent (scripts/label_latent_actions.py → lam/label.py write_cache, format "lam-ids-v1"): `<dir>/<dataset>/<split>
         .npz` + `.json`, ids uint8[N, C] of the transition t → t+offset of every step, episode_id int64[N],
         step int32[N], episode_start int64[E], episode_len int64[E].

Indices follow data/windows.py exactly (n = episode length, s = the dataset's frame stride, c = clip_stride * s):
  frame_ids   frames t + o*s for o in history_offsets, clamped to [0, n-1]
  future_ids  frame t + H*s clamped to [0, n-1]                         (layouts with a future frame)
  latent_ids  cache rows t + k*c clamped, k < S; latent_valid: t + (k+1)*c <= n-1   (layouts with latent steps)
The latent cache labels transition t → t+offset from the LAM clip that STARTS at t (clip_len frames), so it equals the
in-step labels exactly when the LAM's clip_len is 2 (LAPA); with longer clips (ViPRA) the step labels S transitions in
chunks of clip_len-1 that share one clip, and the codes can differ (same shapes and validity).
The image fields (history/future, and clip/clip_valid when latents come from the cache) are removed: the device never
needs them. Extra episodes in a cache are fine; a missing one is an error naming the dataset, episode and cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import InvalidInput

IMAGE_FIELDS = ("history", "history_valid", "future", "future_valid")
CLIP_FIELDS = ("clip", "clip_valid")
LATENT_FORMAT = "lam-ids-v1"


def _base_name(name: str) -> str:
    return name.partition("@")[0].partition(":")[0]  # name[:version][@root]


def episode_hash(tfds_ids: Sequence[str]) -> np.ndarray:
    """The pipeline's episode_id of each tfds_id: int64 to_hash_bucket_fast(tfds_id, 2**62) (data/mixture.py)."""
    from data import tf_setup

    tf = tf_setup.tf
    if len(tfds_ids) == 0:
        return np.zeros(0, np.int64)
    return tf.strings.to_hash_bucket_fast(tf.constant(list(tfds_ids), tf.string), 2**62).numpy().astype(np.int64)


def read_latent_cache(path: str) -> dict[str, Any]:
    """A lam-ids-v1 .npz (no pickle) with its .json metadata under 'meta' (same as lam.label.read_cache)."""
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files}
    meta_path = path[: -len(".npz")] + ".json"
    out["meta"] = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            out["meta"] = json.load(f)
    return out


class TokenCacheJoin:
    """Adds cached token ids to host batches (see module doc). `image` / `latent` may be empty (that part is then
    computed in the step); `strides` overrides the per-dataset frame stride (default: window.frame_stride(name, fps)
    with fps from data.oxe's registry, as the pipeline does)."""

    def __init__(self, *, image: str = "", latent: str = "", datasets: Sequence[str], window: Any, spec: Any,
                 split: str = "train", strides: Mapping[str, int] | None = None):
        self.datasets = tuple(_base_name(d) for d in datasets)
        self.split, self.spec, self.window = split, spec, window
        self.image_path, self.latent_dir = image, latent
        if strides is None:
            from data import oxe

            strides = {d: window.frame_stride(d, oxe.get_spec(d).fps) for d in self.datasets}
        self.stride = np.array([int(strides[d]) for d in self.datasets], np.int64)
        self.offsets = np.asarray(window.history_offsets, np.int64)
        if len(self.offsets) != spec.num_frames:
            raise InvalidInput(f"window has {len(self.offsets)} history offsets, layout {spec.num_frames} frames")
        self._image: tuple[np.ndarray, dict] | None = self._load_image(image) if image else None
        self._latent: tuple[np.ndarray, dict] | None = None
        if latent and spec.latent_steps:
            self._latent = self._load_latent(latent)

    @property
    def has_image(self) -> bool:
        return self._image is not None

    @property
    def has_latent(self) -> bool:
        return self._latent is not None

    # ------------------------------------------------------------------ loading
    def _load_image(self, path: str) -> tuple[np.ndarray, dict]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"image token cache {path!r} (split {self.split!r}) does not exist: build it with "
                                    f"scripts/cache_image_tokens.py --split {self.split} --output {path}")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "tfds_id" not in arrays:
            raise InvalidInput(f"image token cache {path!r} has no tfds_id array (written before the join existed): "
                               "rebuild it with scripts/cache_image_tokens.py")
        ids = arrays["ids"]
        grid = int(np.prod(ids.shape[1:]))
        if grid != self.spec.tokens_per_frame:
            raise InvalidInput(f"image token cache {path!r} has a {'x'.join(map(str, ids.shape[1:]))} grid "
                               f"({grid} tokens per frame) but the layout needs {self.spec.tokens_per_frame} (another "
                               "VQGAN or resolution?)")
        if len(ids) and int(ids.max()) >= self.spec.vision_codebook:
            raise InvalidInput(f"image token cache {path!r} has ids up to {int(ids.max())} but the VQGAN codebook has "
                               f"{self.spec.vision_codebook} entries (cache from another VQGAN?)")
        names = [_base_name(str(n)) for n in arrays["dataset_name"]]
        missing = [d for d in self.datasets if d not in names]
        if missing:
            raise InvalidInput(f"image token cache {path!r} lacks datasets {missing} (has {names})")
        ep, ds, step = arrays["episode"].astype(np.int64), arrays["dataset"], arrays["step"].astype(np.int64)
        hashes = episode_hash([str(t) for t in arrays["tfds_id"]])
        order = np.arange(len(ep))
        starts = np.full(len(hashes), -1, np.int64)
        lens = np.zeros(len(hashes), np.int64)
        if len(ep):
            first = np.r_[True, ep[1:] != ep[:-1]]
            starts[ep[first]] = order[first]
            np.add.at(lens, ep, 1)
            if not np.array_equal(step, order - starts[ep]):
                raise InvalidInput(f"image token cache {path!r}: rows are not contiguous per episode with steps 0..n-1")
        ep_ds = np.full(len(hashes), -1, np.int64)
        ep_ds[ep] = ds
        index: dict[tuple[int, int], tuple[int, int]] = {}
        for d, name in enumerate(self.datasets):
            cd = names.index(name)
            for e in np.flatnonzero(ep_ds == cd):
                index[(d, int(hashes[e]))] = (int(starts[e]), int(lens[e]))
        return ids.reshape(len(ids), -1).astype(np.int32), index

    def _load_latent(self, root: str) -> tuple[np.ndarray, dict]:
        spec, chunks, index, base = self.spec, [], {}, 0
        for d, name in enumerate(self.datasets):
            path = os.path.join(root, name, f"{self.split}.npz")
            if not os.path.exists(path):
                raise FileNotFoundError(f"latent-action cache {path!r} does not exist: label dataset {name!r} split "
                                        f"{self.split!r} with scripts/label_latent_actions.py --out {root}")
            z = read_latent_cache(path)
            meta = z["meta"]
            if not meta:  # write_cache drops the old .json before the new ids land: an interrupted write
                raise InvalidInput(f"latent-action cache {path!r} has no .json metadata beside it (an interrupted "
                                   "write?): label again with scripts/label_latent_actions.py --overwrite")
            if meta.get("format") != LATENT_FORMAT:
                raise InvalidInput(f"{path}: format {meta.get('format')!r}, expected {LATENT_FORMAT!r}")
            ids = z["ids"].reshape(len(z["ids"]), -1)
            if ids.shape[1] != spec.codes_per_step:
                raise InvalidInput(f"latent-action cache {path!r} has {ids.shape[1]} codes per transition but the "
                                   f"layout needs {spec.codes_per_step} (cache from another LAM?)")
            if "codebook_size" in meta and int(meta["codebook_size"]) != spec.latent_codebook:
                raise InvalidInput(f"latent-action cache {path!r} comes from a LAM with codebook "
                                   f"{meta['codebook_size']}, the layout's is {spec.latent_codebook} (another LAM?)")
            step_c = int(self.window.clip_stride) * int(self.stride[d])
            if "offset" in meta and int(meta["offset"]) != step_c:
                raise InvalidInput(f"latent-action cache {path!r} labels transitions t -> t+{meta['offset']} but the "
                                   f"window of {name!r} needs t -> t+{step_c} (clip_stride {self.window.clip_stride} x "
                                   f"frame stride {int(self.stride[d])})")
            for e, s, n in zip(self._episode_ids(z), z["episode_start"].tolist(), z["episode_len"].tolist(),
                               strict=True):
                index[(d, int(e))] = (base + int(s), int(n))
            chunks.append(ids.astype(np.int32))
            base += len(ids)
        return np.concatenate(chunks) if chunks else np.zeros((0, spec.codes_per_step), np.int32), index

    @staticmethod
    def _episode_ids(z: Mapping[str, np.ndarray]) -> np.ndarray:
        starts, n = z["episode_start"].astype(np.int64), len(z["episode_id"])
        ids = z["episode_id"][np.minimum(starts, max(n - 1, 0))] if n else np.full(len(starts), -1, np.int64)
        return np.where(z["episode_len"] > 0, ids, -1)  # empty episodes: never in a batch

    # ------------------------------------------------------------------ the join
    def _lookup(self, index: dict, what: str, where: str, ds: np.ndarray, eids: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(ds), 2), np.int64)
        for i, key in enumerate(zip(ds.tolist(), eids.tolist(), strict=True)):
            hit = index.get(key)
            if hit is None:
                name = self.datasets[key[0]] if 0 <= key[0] < len(self.datasets) else f"#{key[0]}"
                raise KeyError(f"{what} {where!r} has no episode {key[1]} of dataset {name!r} (split {self.split!r}): "
                               "the cache was built from another split, dataset version or filter, or by another "
                               "tokenizer run; rebuild it")
            out[i] = hit
        return out[:, 0], out[:, 1]

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        if self._image is None and self._latent is None:
            return out
        ds = np.asarray(batch["dataset_index"]).astype(np.int64)
        eids = np.asarray(batch["episode_id"]).astype(np.int64)
        t = np.asarray(batch["step"]).astype(np.int64)[:, None]
        s = self.stride[ds][:, None]
        spec, b = self.spec, len(ds)
        if self._image is not None:
            ids, index = self._image
            start, n = self._lookup(index, "image token cache", self.image_path, ds, eids)
            start, last = start[:, None], n[:, None] - 1
            out["frame_ids"] = ids[start + np.clip(t + self.offsets[None] * s, 0, last)].reshape(b, spec.num_frames, -1)
            if spec.future_frame:
                out["future_ids"] = ids[start[:, 0] + np.clip(t[:, 0] + self.window.horizon * s[:, 0], 0, last[:, 0])]
            for k in IMAGE_FIELDS:
                out.pop(k, None)
        if self._latent is not None:
            ids, index = self._latent
            start, n = self._lookup(index, "latent-action cache", self.latent_dir, ds, eids)
            start, last = start[:, None], n[:, None] - 1
            c, k = int(self.window.clip_stride) * s, np.arange(spec.latent_steps)[None]
            out["latent_ids"] = ids[start + np.clip(t + k * c, 0, last)]
            out["latent_valid"] = t + (k + 1) * c <= last
            for f in CLIP_FIELDS:
                out.pop(f, None)
        return out


def from_config(config: Any, window: Any, spec: Any, split: str) -> TokenCacheJoin | None:
    """The join of `config.cache` ({"image": path with {split}, "latent": label dir}) for `split`, None when unset."""
    cache = config.get("cache") if hasattr(config, "get") else None
    image = (cache or {}).get("image", "") or ""
    latent = (cache or {}).get("latent", "") or ""
    if not image and not latent:
        return None
    return TokenCacheJoin(image=image.format(split=split) if image else "", latent=latent,
                          datasets=tuple(config.data.datasets), window=window, spec=spec, split=split)
