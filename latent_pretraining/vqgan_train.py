"""VQGAN trainer on the shared loop: pixel L1/L2 + commitment, EMA codebook with dead-code restarts.

    python -m latent_pretraining.vqgan_train --config=configs/vqgan.py:demo --workdir=runs/vqgan_demo
    python -m latent_pretraining.vqgan_train --config=configs/vqgan.py:demo --workdir=runs/vqgan_demo --eval_only

Recipe:
- Loss = l1·|x̂−x| + l2·(x̂−x)² + commitment·‖z − sg(e)‖² (+ gradient·|∇x̂ − ∇x| + adversarial·hinge-GAN, both
  off by default; neither needs pretrained weights). x̂ is the unclipped decoder output, x in [-1, 1].
- Codebook: EMA k-means (`ema_codebook_update`), kept in the non-trained collection "vq" (TrainState.model_state).
  Codes whose EMA assignment count drops below `vq.dead_threshold` are re-seeded from random encoder outputs of
  the current *global* batch. The update is one jitted computation on the global arrays, so every device holds the
  same codebook (no per-device randomness); the first step seeds all codes from data.
- Adversarial term: a small PatchGAN (params under "discriminator") trained in the same step: its hinge loss only
  reaches the discriminator (decoder output stop-gradient'ed) and the generator term only the VQGAN (discriminator
  params stop-gradient'ed), so one optimizer serves both. Enabled after `loss.adversarial_start` steps.
- Every `eval.every` steps and at the end: PSNR / codebook usage on held-out frames, a reconstruction PNG, and the
  tokenizer file `<workdir>/<export>` (LWM-layout params + config; `vqgan.load_tokenizer`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from latent_pretraining import vqgan_data
from latent_pretraining.model import vqgan
from latent_pretraining.training import distributed, loop

PyTree = Any


# ------------------------------------------------------------------------------------------------ codebook EMA
def ema_codebook_update(vq: PyTree, z: jax.Array, ids: jax.Array, rng: jax.Array, *, decay: float,
                        dead_threshold: float, restart_count: float = 1.0) -> tuple[PyTree, dict[str, jax.Array]]:
    """One EMA k-means step on the "vq" collection from encodings z [..., D] and their code ids [...].

    Returns (new vq collection, metrics: batch perplexity, fraction of codes used in the batch, codes restarted).
    """
    q = vq["quantize"]
    k, d = q["embeddings"].shape
    zf = jax.lax.stop_gradient(z).reshape(-1, d).astype(jnp.float32)
    idf = ids.reshape(-1)
    counts = jax.ops.segment_sum(jnp.ones_like(idf, jnp.float32), idf, num_segments=k)
    sums = jax.ops.segment_sum(zf, idf, num_segments=k)
    cs = decay * q["cluster_size"] + (1.0 - decay) * counts
    es = decay * q["embed_sum"] + (1.0 - decay) * sums
    live = cs > 1e-6
    emb = jnp.where(live[:, None], es / jnp.maximum(cs, 1e-6)[:, None], q["embeddings"])
    dead = cs < dead_threshold if dead_threshold > 0 else jnp.zeros((k,), bool)
    cand = zf[jax.random.randint(rng, (k,), 0, zf.shape[0])]
    emb = jnp.where(dead[:, None], cand, emb)
    cs = jnp.where(dead, restart_count, cs)
    es = jnp.where(dead[:, None], cand * restart_count, es)
    p = counts / jnp.maximum(counts.sum(), 1.0)
    metrics = {"perplexity": jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0))),
               "codes_used": jnp.mean(counts > 0), "restarted": jnp.sum(dead).astype(jnp.float32)}
    return {"quantize": {"embeddings": emb, "cluster_size": cs, "embed_sum": es}}, metrics


# --------------------------------------------------------------------------------------- optional loss terms
class PatchDiscriminator(nn.Module):
    """Hinge-GAN critic: [B,H,W,3] in [-1,1] → logits [B,H/8,W/8,1] (three stride-2 convs, LeakyReLU)."""

    channels: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, m in enumerate((1, 2, 4)):
            x = nn.leaky_relu(nn.Conv(self.channels * m, (4, 4), strides=(2, 2), name=f"Conv_{i}")(x), 0.2)
        return nn.Conv(1, (3, 3), name="logits")(x)


def gradient_loss(recon: jax.Array, target: jax.Array) -> jax.Array:
    """L1 between finite-difference image gradients (sharpness; a weight-free stand-in for a perceptual loss)."""
    dy = lambda a: a[:, 1:] - a[:, :-1]
    dx = lambda a: a[:, :, 1:] - a[:, :, :-1]
    return jnp.mean(jnp.abs(dy(recon) - dy(target))) + jnp.mean(jnp.abs(dx(recon) - dx(target)))


# ------------------------------------------------------------------------------------------------ the model fns
def model_config(config: ml_collections.ConfigDict) -> vqgan.VQGANConfig:
    return vqgan.VQGANConfig.from_dict(config.model.to_dict())


def make_init_fn(config: ml_collections.ConfigDict) -> Any:
    mcfg = model_config(config)
    model = vqgan.VQGAN(mcfg, ema_codebook=True)
    res = config.data.resolution
    mcfg.token_grid(res)

    def init_fn(rng: jax.Array) -> dict[str, Any]:
        r_model, r_disc = jax.random.split(rng)
        x = jnp.zeros((1, res, res, mcfg.in_channels), jnp.float32)
        v = model.init(r_model, x)
        params = dict(v["params"])
        if config.loss.adversarial > 0:
            params["discriminator"] = PatchDiscriminator(config.loss.disc_channels).init(r_disc, x)["params"]
        return {"params": params, "vq": v["vq"], "counter": {"step": jnp.zeros((), jnp.int32)}}

    return init_fn


def make_loss_fn(config: ml_collections.ConfigDict) -> Any:
    """(params, batch, rng, model_state) -> (loss, (metrics, new model_state)) for `loop.run`."""
    model = vqgan.VQGAN(model_config(config), ema_codebook=True)
    w, vqc = config.loss, config.vq
    disc = PatchDiscriminator(w.disc_channels)

    def loss_fn(params, batch, rng, model_state):
        x = vqgan.to_model_range(batch["frames"])
        vq_params = {k: v for k, v in params.items() if k != "discriminator"}
        out = model.apply({"params": vq_params, "vq": model_state["vq"]}, x)
        r = out["recon"]
        m = {"l1": jnp.mean(jnp.abs(r - x)), "l2": jnp.mean(jnp.square(r - x)),
             "commitment": jnp.mean(jnp.square(out["z"] - jax.lax.stop_gradient(out["zq"])))}
        loss = w.l1 * m["l1"] + w.l2 * m["l2"] + w.commitment * m["commitment"]
        if w.gradient > 0:
            m["gradient"] = gradient_loss(r, x)
            loss = loss + w.gradient * m["gradient"]
        step = model_state["counter"]["step"]
        if w.adversarial > 0:
            on = (step >= w.adversarial_start).astype(jnp.float32)
            dp = params["discriminator"]
            m["g_adv"] = -jnp.mean(disc.apply({"params": jax.lax.stop_gradient(dp)}, r))
            real, fake = disc.apply({"params": dp}, x), disc.apply({"params": dp}, jax.lax.stop_gradient(r))
            m["d_hinge"] = jnp.mean(nn.relu(1.0 - real)) + jnp.mean(nn.relu(1.0 + fake))
            loss = loss + on * (w.adversarial * m["g_adv"] + m["d_hinge"])
        new_vq, vq_m = ema_codebook_update(model_state["vq"], out["z"], out["ids"], rng, decay=vqc.decay,
                                           dead_threshold=vqc.dead_threshold, restart_count=vqc.restart_count)
        m.update(vq_m)
        m["psnr"] = psnr_from_mse(jnp.mean(jnp.square(jnp.clip(r, -1, 1) - x)) / 4.0)
        return loss, (m, {"vq": new_vq, "counter": {"step": step + 1}})

    return loss_fn


# -------------------------------------------------------------------------------------------------- evaluation
def psnr_from_mse(mse: Any) -> Any:
    """PSNR in dB of a mean squared error on [0, 1]-scaled pixels."""
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def per_image_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,C] pairs → PSNR dB [N] (per image, peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def foreground_psnr(frames: np.ndarray, recon: np.ndarray, threshold: int = 40) -> float:
    """PSNR (dB) over "foreground" pixels only: those differing by > `threshold` (any channel) from the per-pixel
    median of `frames` (the static background of the demo world: blocks, effector, hand)."""
    bg = np.median(frames, axis=0)
    mask = np.abs(frames.astype(np.int16) - bg.astype(np.int16)).max(-1) > threshold
    if not mask.any():
        return float("nan")
    mse = np.mean((frames[mask].astype(np.float64) - recon[mask].astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0**2 / max(mse, 1e-10)))


def resize_baseline(frames: np.ndarray, size: int, method: str = "cubic") -> np.ndarray:
    """Same-bit-budget baseline: antialiased downsample to size×size uint8, then `method` upsample back."""
    n, h, w, c = frames.shape
    x = jnp.asarray(frames, jnp.float32)
    small = jnp.clip(jnp.round(jax.image.resize(x, (n, size, size, c), "linear", antialias=True)), 0, 255)
    up = jax.image.resize(small, (n, h, w, c), method)
    return np.asarray(jnp.clip(jnp.round(up), 0, 255).astype(jnp.uint8))


def evaluate(params: PyTree, mcfg: vqgan.VQGANConfig, frames: np.ndarray, batch_size: int = 64
             ) -> tuple[dict[str, float], np.ndarray]:
    """Round-trip metrics on uint8 frames [N,H,W,3]: PSNR (per-image mean), codebook usage/perplexity, and the
    same-bit-budget resize baseline. Returns (metrics, reconstructions uint8[N,H,W,3])."""
    ids, recs = [], []
    for s in range(0, len(frames), batch_size):
        chunk = frames[s:s + batch_size]
        pad = batch_size - len(chunk)
        x = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.uint8)]) if pad else chunk
        t = vqgan.encode(params, x, config=mcfg)
        ids.append(np.asarray(t)[:len(chunk)])
        recs.append(np.asarray(vqgan.decode(params, t, config=mcfg))[:len(chunk)])
    ids_a, rec = np.concatenate(ids), np.concatenate(recs)
    counts = np.bincount(ids_a.ravel(), minlength=mcfg.num_embeddings)
    p = counts / counts.sum()
    bits = ids_a[0].size * float(np.log2(mcfg.num_embeddings))
    side = int(np.floor(np.sqrt(bits / (8 * frames.shape[-1]))))  # largest s with s·s·3·8 bits ≤ the token bits
    ups = {m: resize_baseline(frames, side, m) for m in ("linear", "cubic")}
    base = {m: float(per_image_psnr(frames, u).mean()) for m, u in ups.items()}
    best = max(base, key=base.get)
    return {
        "psnr": float(per_image_psnr(frames, rec).mean()),
        "foreground_psnr": foreground_psnr(frames, rec), "baseline_foreground_psnr": foreground_psnr(frames, ups[best]),
        "codebook_used_frac": float(np.mean(counts > 0)),
        "codebook_perplexity": float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))),
        "bits_per_image": bits, "baseline_side": side, "baseline_bits": side * side * frames.shape[-1] * 8,
        "baseline_psnr": base[best], "baseline_method": best, "frames": len(frames),
    }, rec


def export(state: Any) -> PyTree:
    """LWM-layout params (host numpy) of a train state."""
    return jax.device_get(vqgan.export_params(state.params, state.model_state["vq"]))


def load_checkpoint_tokenizer(workdir: str, step: int | None = None) -> tuple[vqgan.VQGANConfig, PyTree]:
    """(config, LWM-layout params) from a training checkpoint (`params` + the EMA codebook in `train_state`)."""
    import orbax.checkpoint as ocp

    from latent_pretraining.training import checkpoint as ckpt_lib

    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    step = ckpt_lib.verified_step(directory, step)  # config and weights from this one intact checkpoint
    mcfg = vqgan.VQGANConfig.from_dict(json.loads(ckpt_lib.read_assets(directory, step)["vqgan_config.json"]))
    with ocp.CheckpointManager(directory, item_names=ckpt_lib.ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        out = m.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                      train_state=ocp.args.StandardRestore()))
    return mcfg, jax.device_get(vqgan.export_params(out["params"], out["train_state"]["model_state"]["vq"]))


def _save_png(path: str, frames: np.ndarray, recon: np.ndarray, n: int = 8) -> None:
    from PIL import Image

    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(int)  # spread over episodes
    grid = np.concatenate([np.concatenate(list(frames[idx]), 1), np.concatenate(list(recon[idx]), 1)], 0)
    Image.fromarray(grid).save(path)


def make_eval_hook(config: ml_collections.ConfigDict, workdir: str, val: np.ndarray) -> Any:
    mcfg = model_config(config)

    def hook(step: int, state: Any, host_metrics: Any, logger: Any) -> None:
        every = config.eval.every
        if step != config.train.total_steps and not (every and step % every == 0):
            return
        params = export(state)
        metrics, rec = evaluate(params, mcfg, val, config.eval.batch_size)
        logger.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        logger.write_images(step, "eval/recon", np.concatenate([val[:8], rec[:8]], 2))
        logging.info("eval step %d: %s", step, json.dumps(metrics))
        if jax.process_index() == 0:
            vqgan.save_tokenizer(os.path.join(workdir, config.export), params, mcfg,
                                 extra={"step": step, "eval": metrics, "preset": config.preset})
            _save_png(os.path.join(workdir, "recon.png"), val, rec)
            with open(os.path.join(workdir, "eval.json"), "w") as f:
                json.dump({"step": step, **metrics}, f, indent=2)

    return hook


def _camera(config: ml_collections.ConfigDict) -> str:
    """data.camera ('' = each dataset's registry default: 'primary', 'secondary' or 'wrist')."""
    return str(config.data.get("camera", "") or "")


def data_fingerprint(config: ml_collections.ConfigDict) -> str:
    """What the training frames are (data/episodes.py fingerprint: root, names, versions, split, features,
    conventions, camera, resolution, stride, cap, batch size); for `loop.run(data_fingerprint=...)` (refused on
    resume if changed).
    """
    d = config.data
    return vqgan_data.fingerprint(d.root, d.datasets, d.train_split, d.resolution, _camera(config), stride=d.stride,
                                  max_frames=d.max_frames, flip=bool(d.flip),
                                  global_batch_size=int(d.global_batch_size))


def val_frames(config: ml_collections.ConfigDict) -> np.ndarray:
    d = config.data
    frames = vqgan_data.load_frames(d.root, d.datasets, d.val_split, d.resolution, camera=_camera(config))
    if d.val_frames and len(frames) > d.val_frames:  # evenly spaced, deterministic
        frames = frames[np.linspace(0, len(frames) - 1, d.val_frames).astype(int)]
    return frames


def train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, overwrite: bool = False,
          train_frames: np.ndarray | None = None, val: np.ndarray | None = None) -> loop.RunResult:
    """Runs the recipe; `train_frames` / `val` (uint8 [N,R,R,3]) override reading `config.data` (tests)."""
    d = config.data
    fingerprint = data_fingerprint(config) if train_frames is None else None  # frames passed in: nothing to check
    # a bad mesh / batch fails before loading frames
    loop.validate(config.train, batch_size=d.global_batch_size, batch_name="data.global_batch_size")
    workdir = os.path.abspath(workdir)  # orbax needs absolute checkpoint paths
    if train_frames is None:
        train_frames = vqgan_data.load_frames(d.root, d.datasets, d.train_split, d.resolution, stride=d.stride,
                                              max_frames=d.max_frames, camera=_camera(config))
    val = val_frames(config) if val is None else val
    local = d.global_batch_size // jax.process_count()
    sampler = vqgan_data.FrameSampler(train_frames, local, config.train.seed, jax.process_index(), flip=d.flip)
    mcfg = model_config(config)
    return loop.run(
        config=config.train, workdir=workdir, resume=resume, overwrite=overwrite, init_fn=make_init_fn(config),
        loss_fn=make_loss_fn(config), data=sampler, items_per_step=d.global_batch_size, item_name="images",
        assets={"vqgan_config.json": mcfg.to_dict()}, hooks=[make_eval_hook(config, workdir, val)],
        full_config=config, batch_size=d.global_batch_size, data_fingerprint=fingerprint,
    )


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    distributed.initialize(config.train.distributed)  # multi-host: before anything touches a device
    if flags.FLAGS.eval_only:
        mcfg, params = vqgan.load_tokenizer(os.path.join(workdir, config.export))
        metrics, _ = evaluate(params, mcfg, val_frames(config), config.eval.batch_size)
        print(json.dumps(metrics, indent=2))
        return
    res = train(config, workdir, resume=flags.FLAGS.resume, overwrite=flags.FLAGS.overwrite)
    print(json.dumps({"step": res.step, **{k: res.metrics[k] for k in ("loss", "l1", "psnr", "perplexity")
                                           if k in res.metrics}}))


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from core import cli

    config_flags.DEFINE_config_file("config", None, "configs/vqgan.py:<preset>", lock_config=True)
    loop.define_flags()
    flags.DEFINE_bool("eval_only", False, "Evaluate <workdir>/<export> on the val frames and print the metrics.")
    logging.getLogger().setLevel(logging.INFO)
    cli.run_absl(main, trainer=True)
