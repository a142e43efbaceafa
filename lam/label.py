"""Latent-action labelling: one jitted frames → code-ids function, and an RLDS → id-cache writer.

    config, variables = load_lam("runs/lam_demo/lapa")          # latest checkpoint, replacement shift folded in
    labeler = Labeler(config, variables)
    ids = labeler(frames)         # frames uint8/float[B, T, H, W, 3] → int32[B, T-1, C] (C = codes per transition)
    ids = labeler.fn(variables, frames)   # the same, pure (jit-able inside another step, e.g. the VideoLLaMA's)

Frames of another size are resized (bilinear) to the LAM's `image_size`. LAPA preset: T = 2 (frames t, t+offset) and
C = 4; ViPRA preset: T frames and C = 16 (4×4 grid, row-major).

Cache format (`write_cache`), one pair of files per dataset split, `<out>/<dataset>/<split>.npz` + `.json`:
  npz (numpy, no pickle): ids uint8[N, C]  (code ids of the transition t → t+offset for every step t of every
      episode, clamped at the episode end), episode_id int64[N] (the pipeline's id: to_hash_bucket_fast(tfds_id,
      2**62), see data/mixture.py), step int32[N], episode_start int64[E], episode_len int64[E],
      tfds_id str[E] (e.g. "demo_robot-train.tfrecord-00000-of-00004__3"), valid bool[N] (every clip frame of
      the transition is a real camera frame: not an absent camera or a blank frame)
  json: dataset, version dir, split, checkpoint, step of the checkpoint, offset, clip_len, codebook_size,
      codes_per_transition, num_steps, format "lam-ids-v1".
Join: row = episode_start[e] + step for the episode e whose episode_id matches (or a dict episode_id → e).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lam import config as lam_config
from lam.model import LatentActionModel
from lam.stabilize import stabilize

PyTree = Any
CACHE_FORMAT = "lam-ids-v1"


def fold_shift(variables: PyTree) -> PyTree:
    """Variables with the replacement shift added into the codebook param (and zeroed), for inference/export."""
    params = jax.tree.map(lambda x: x, dict(variables["params"]))
    nsvq = dict(variables["nsvq"]["quantizer"])
    q = dict(params["quantizer"])
    q["codebook"] = q["codebook"] + nsvq["shift"]
    params["quantizer"] = q
    nsvq["shift"] = jnp.zeros_like(nsvq["shift"])
    return {"params": params, "nsvq": {"quantizer": nsvq}}


def load_lam(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, PyTree]:
    """(config, variables) of a LAM training run's checkpoint `step` (default: the newest intact one; a newer
    corrupt one is skipped with a warning), the shift folded into the codebook."""
    import orbax.checkpoint as ocp

    from latent_pretraining.training import checkpoint

    ckdir = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(ckdir):
        raise FileNotFoundError(f"no checkpoints/ in {workdir!r}: train a LAM there first (python -m lam.train ...)")
    step = checkpoint.verified_step(ckdir, step)  # config and weights from this one intact checkpoint
    assets = checkpoint.read_assets(ckdir, step)
    if "config.json" not in assets:
        from core.errors import UserError

        raise UserError(f"checkpoint {ckdir}/{step} has no config.json asset: is {workdir!r} a lam.train run?")
    config = lam_config.from_saved(json.loads(assets["config.json"]))  # older runs: legacy defaults filled in
    with ocp.CheckpointManager(ckdir, item_names=checkpoint.ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        ts = m.restore(step, args=ocp.args.Composite(train_state=ocp.args.StandardRestore()))["train_state"]
        params = m.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    variables = {"params": params, **ts["model_state"]}
    config.unlock()
    config.checkpoint_step = int(step)
    return config, fold_shift(variables)


class Labeler:
    """frames → code ids; `fn` is pure in (variables, frames), `__call__` is it jitted with bound variables."""

    def __init__(self, config: ml_collections.ConfigDict, variables: PyTree):
        self.config, self.variables = config, variables
        self.model = LatentActionModel(config.model)
        self.codes = int(config.model.code_grid) ** 2
        self._jit = jax.jit(self.fn)

    def prepare(self, frames: jax.Array, reference: int = 0) -> jax.Array:
        """frames uint8/float[B, T, H, W, 3] → what the model reads: float 0..1 at the LAM's size, registered to
        frame `reference` when the LAM was trained so (`model.stabilize`; a clip that leads with decoder context
        frames is registered to its first transition frame, reference = model.decoder.context)."""
        x = frames.astype(jnp.float32) / 255.0 if frames.dtype == jnp.uint8 else frames.astype(jnp.float32)
        r = int(self.config.model.image_size)
        if x.shape[2:4] != (r, r):
            x = jax.image.resize(x, (*x.shape[:2], r, r, 3), "bilinear")
        return stabilize(x, reference)[0] if self.config.model.get("stabilize", False) else x

    def fn(self, variables: PyTree, frames: jax.Array) -> jax.Array:
        """frames uint8/float[B, T, H, W, 3] (uint8 0..255 or float 0..1) → int32[B, T-1, C]."""
        ids = self.model.apply(variables, self.prepare(frames), method=LatentActionModel.label)
        return ids.reshape(ids.shape[0], ids.shape[1], -1)

    def with_vectors(self) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
        """Jitted frames uint8/float[B, T, H, W, 3] → (code ids int32[B, T-1, C], the code vectors before
        quantization float[B, T-1, C·Dq]) from one encoder pass (what the encoder says before NSVQ rounds it to
        code ids; the evaluation probes both)."""
        def f(variables, frames):
            def run(model: LatentActionModel, clip: jax.Array) -> tuple[jax.Array, jax.Array]:
                z = model.encode(clip)
                return model.quantize(z, train=False)[1], z

            ids, z = self.model.apply(variables, self.prepare(frames), method=run)
            return ids.reshape(*ids.shape[:2], -1), z.reshape(*z.shape[:2], -1)

        jf = jax.jit(f)
        return lambda frames: jf(self.variables, jnp.asarray(frames))

    def __call__(self, frames: Any) -> jax.Array:
        if np.ndim(frames) != 5 or np.shape(frames)[-1] != 3:
            raise ValueError(f"frames must be [B, T, H, W, 3], got shape {np.shape(frames)}")
        return self._jit(self.variables, jnp.asarray(frames))

    def decode(self) -> Callable[..., jax.Array]:
        """Jitted (frames float[B, N, H, W, 3], ids int32[B, N, C], context float[B, 1, H, W, 3] | None) → predicted
        next frames (hard codes). `context` (the frame `offset` before frames[:, 0]) is required iff the LAM was
        trained with model.decoder.context = 1; labelling itself never needs it."""
        g = int(self.config.model.code_grid)

        def f(variables, frames, ids, context):
            ids = ids.reshape(*ids.shape[:2], g, g)
            codes = self.model.apply(variables, ids, method=LatentActionModel.codes_from_ids)
            return self.model.apply(variables, frames, codes, context, method=LatentActionModel.decode)[0]

        jf = jax.jit(f)
        return lambda frames, ids, context=None: jf(self.variables, frames, ids, context)


def write_cache(labeler: Labeler, root: str, dataset: str, split: str, out_dir: str, *, batch_size: int = 64,
                checkpoint: str = "", camera: str = "") -> str:
    """Labels every step of `dataset` ('name[:version][@root]', read through data/episodes.py: the configured version,
    the registry's conventions and camera) split `split`; returns the .npz path (see module doc).

    camera '' = the LAM's data.camera if its config has one, else the registry default.
    """
    from data import episodes

    c = labeler.config
    offset, clip_len = int(c.data.offset), int(c.data.clip_len)
    camera = camera or str(c.data.get("camera", "") or "")
    src = episodes.parse_source(dataset, root, split=split, camera=camera).resolved()
    res = int(c.model.image_size)
    ids_all, ep_ids, steps, lens, tfds_ids, valid = [], [], [], [], [], []
    pending: list[np.ndarray] = []

    def flush() -> None:
        clips = np.concatenate(pending, 0)
        pending.clear()
        for i in range(0, len(clips), batch_size):
            chunk = clips[i:i + batch_size]
            pad = batch_size - len(chunk)
            full = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
            ids_all.append(np.asarray(labeler(full))[: len(chunk), 0].astype(np.uint8))

    for ep in episodes.iter_episodes(src, res):
        frames = ep.frames
        n = len(frames)
        if n == 0:
            continue
        idx = np.minimum(np.arange(n)[:, None] + offset * np.arange(clip_len)[None, :], n - 1)
        pending.append(frames[idx])
        ep_ids.append(np.full(n, ep.episode_id, np.int64))
        steps.append(np.arange(n, dtype=np.int32))
        valid.append(ep.frame_valid[idx].all(axis=1))
        lens.append(n)
        tfds_ids.append(ep.tfds_id)
        if sum(len(p) for p in pending) >= 16 * batch_size:
            flush()
    if pending:
        flush()
    if not lens:
        from data.rlds import DataError

        raise DataError(f"dataset {src.name!r} split {split!r}: no episodes to label")
    lens_a = np.array(lens, np.int64)
    path = os.path.join(out_dir, src.name, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".tmp.npz", ids=np.concatenate(ids_all), episode_id=np.concatenate(ep_ids),
             step=np.concatenate(steps), episode_start=np.concatenate([[0], np.cumsum(lens_a)[:-1]]).astype(np.int64),
             episode_len=lens_a, tfds_id=np.array(tfds_ids), valid=np.concatenate(valid))
    if os.path.exists(path + ".json"):  # an interruption between the two renames leaves ids with no metadata,
        os.remove(path + ".json")      # which the join refuses (token_cache.py), never new ids under old metadata
    os.replace(path + ".tmp.npz", path + ".npz")
    meta = {"format": CACHE_FORMAT, "dataset": src.name, "version_dir": os.path.join(src.root, src.name, src.version),
            "version": src.version, "camera": src.camera, "split": split, "checkpoint": checkpoint,
            "data_fingerprint": episodes.fingerprint([src], resolution=res),
            "checkpoint_step": int(c.get("checkpoint_step", -1)), "offset": offset, "clip_len": clip_len,
            "codebook_size": int(c.model.codebook_size), "codes_per_transition": labeler.codes,
            "num_steps": int(lens_a.sum()), "num_episodes": len(lens)}
    with open(path + ".tmp.json", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(path + ".tmp.json", path + ".json")
    return path + ".npz"


def read_cache(path: str) -> dict[str, np.ndarray]:
    """Loads a cache .npz (no pickle) with its metadata under 'meta'."""
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files}
    meta_path = path[: -len(".npz")] + ".json"
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            out["meta"] = json.load(f)
    return out
