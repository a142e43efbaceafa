"""LAM training: `python -m lam.train --config=configs/lam.py:lapa_demo --workdir=runs/lam_demo/lapa`.

The loss function runs the model with the mutable 'nsvq' collection (usage counters, replacement shift, call clock),
then applies the scheduled dead-code replacement from the global counts inside the jitted step, so the codebook is
identical on every replica by construction. Codebook usage over training goes to <workdir>/codebook_usage.jsonl (and
TensorBoard via the metrics).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from core.errors import InvalidInput
from lam import config as lam_config
from lam import data as lam_data
from lam import losses, stabilize
from lam.model import LatentActionModel, count_params
from lam.quantizer import perplexity, replace_dead_codes, usage

PyTree = Any
QUANTIZER = "quantizer"  # module name of the NSVQ inside LatentActionModel
TRAIN_KEYS = ("clip", "flow", "clip_valid", "action", "action_mask", "effector")


def to_float(clip: jax.Array) -> jax.Array:
    """uint8 frames → float32 in [0, 1]."""
    return clip.astype(jnp.float32) / 255.0 if clip.dtype == jnp.uint8 else clip.astype(jnp.float32)


def make_model(config: ml_collections.ConfigDict) -> LatentActionModel:
    return LatentActionModel(config.model)


def dummy_clip(config: ml_collections.ConfigDict, batch: int = 1) -> jax.Array:
    """zeros float32[batch, context + clip_len, R, R, 3]: what the model's __call__ reads."""
    r = config.model.image_size
    return jnp.zeros((batch, lam_config.context_frames(config) + config.data.clip_len, r, r, 3), jnp.float32)


def make_init_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array], PyTree]:
    model = make_model(config)

    def init_fn(rng: jax.Array) -> PyTree:
        r1, r2 = jax.random.split(rng)
        return model.init({"params": r1, "nsvq": r2}, dummy_clip(config), train=True)

    return init_fn


def make_loss_fn(config: ml_collections.ConfigDict, feature_fn: losses.FeatureFn | None = None) -> Callable:
    """(params, batch, rng, model_state) -> (loss, (metrics, new_model_state)); batch = {'clip' uint8[B, C + L, R, R,
    3] (C = model.decoder.context leading frames for the decoder), optional 'flow' float[B, L-1, R, R, 2] (pixels),
    optional 'clip_valid' bool[B, C + L]}; the loss and metrics are over the L-frame clip after the context."""
    lam_config.check(config)
    model = make_model(config)
    lc, qc = config.loss, config.quantizer
    if lc.perceptual_weight > 0 and feature_fn is None:
        raise ValueError("loss.perceptual_weight > 0 needs a feature network: make_loss_fn(config, feature_fn=...)")

    n_ctx = lam_config.context_frames(config)

    def loss_fn(params, batch, rng, model_state):
        full = to_float(batch["clip"])
        flow = batch.get("flow")
        if config.model.stabilize:  # the camera's shift out of frames and flow target alike (lam/stabilize.py)
            full = stabilize.stabilize(full, reference=n_ctx)[0]  # registered to frame t, as the labeler does
            flow = None if flow is None else stabilize.compensate_flow(flow)
        r_q, r_rep = jax.random.split(rng)
        out, new_vars = model.apply({"params": params, **model_state}, full, train=True, rngs={"nsvq": r_q},
                                    mutable=["nsvq"])
        clip = full[:, n_ctx:]  # the frames the encoder and the targets are about
        target = clip[:, 1:]
        mask = None
        if "clip_valid" in batch:
            valid = batch["clip_valid"][:, n_ctx:]
            mask = valid[:, 1:] & valid[:, :-1]
        agent = None
        if lc.get("agent_weight", 0.0) > 0:  # the oracle agent mask (effector truth of the L clip frames)
            agent = losses.agent_weights(batch["effector"], clip.shape[-2], lc.agent_radius, lc.agent_weight)
        rec = losses.pixel_loss(out["pred"], target, lc.pixel, mask, previous=clip[:, :-1],
                                motion_weight=lc.motion_weight, weight=agent)
        loss = lc.pixel_weight * rec
        metrics = {"rec": rec}
        nsvq = dict(new_vars["nsvq"][QUANTIZER])
        step = nsvq["calls"]
        if lc.perceptual_weight > 0:
            perc = losses.perceptual_loss(feature_fn, out["pred"], target, mask)
            loss, metrics["perceptual"] = loss + lc.perceptual_weight * perc, perc
        if config.model.flow_head and flow is not None:
            fl = losses.flow_loss(out["flow"], flow, mask, kind=lc.flow,
                                  moving_weight=lc.flow_moving_weight, moving_power=lc.flow_moving_power,
                                  weight=agent)
            loss = loss + losses.flow_weight(step, lc.flow_weight, lc.flow_start, lc.flow_warmup) * fl
            metrics["flow"] = fl
        if lc.get("action_weight", 0.0) > 0:  # semi-supervised: only clips of labelled episodes count
            labelled = jnp.broadcast_to(batch["action_mask"][:, None], out["action"].shape[:2])
            act = losses.action_loss(out["action"], batch["action"], labelled if mask is None else labelled & mask)
            loss, metrics["action"] = loss + lc.action_weight * act, act
        new_nsvq, qm = replace_dead_codes(params[QUANTIZER]["codebook"], nsvq, out["z"], r_rep,
                                          schedule=qc.schedule, threshold=qc.threshold, source=qc.source,
                                          noise=qc.noise, warmup_steps=config.model.quant_warmup_steps)
        ids = out["ids"]
        batch_counts = usage(ids, config.model.codebook_size)
        p = jax.lax.stop_gradient(out["pred"])
        metrics.update(qm)
        metrics.update({
            "psnr": jnp.mean(losses.psnr(p, target)),
            "psnr_copy": jnp.mean(losses.psnr(clip[:, :-1], target)),
            "perplexity": perplexity(batch_counts),
            "unique_codes": jnp.sum(batch_counts > 0).astype(jnp.float32),
        })
        new_state = {**model_state, "nsvq": {**new_vars["nsvq"], QUANTIZER: new_nsvq}}
        return loss, (metrics, new_state)

    return loss_fn


def make_data(config: ml_collections.ConfigDict, *, split: str | None = None, seed: int | None = None) -> Iterator:
    """The training batch iterator named by config.data.source."""
    d = config.data
    seed = config.train.seed if seed is None else seed
    split = split or d.train_split
    want_flow = config.model.flow_head and config.loss.flow_weight > 0
    lam_config.check(config)  # data.source, loss.flow_target: allowed values; a context frame needs 'memory'
    n_ctx = lam_config.context_frames(config)
    target = config.loss.flow_target
    gt_flow = want_flow and target == "ground_truth"
    if d.source == "memory":
        table = lam_data.load_table(d.root, d.datasets, split, with_flow=gt_flow,
                                    max_episodes=d.max_episodes or None, cache_dir=d.cache_dir,
                                    resolution=int(config.model.image_size), camera=str(d.camera))
        supervised = config.loss.get("action_weight", 0.0) > 0
        it = lam_data.ClipSampler(table, batch_size=d.batch_size, clip_len=d.clip_len, offset=d.offset, seed=seed,
                                  weights=d.weights, with_flow=gt_flow, context=n_ctx,
                                  action_episodes=int(d.action_episodes) if supervised else None,
                                  action_share=float(d.action_share))
    elif d.source == "pipeline":
        if gt_flow:
            raise InvalidInput("the streaming pipeline has no ground-truth flow: set loss.flow_target='farneback' or "
                               "'block_match' (estimated from the frames) or use data.source='memory' (demo world)")
        from data.loader import make_iterator
        from data.mixture import PipelineConfig, mixture_from_lists
        from data.windows import lam_window

        mixture = mixture_from_lists("lam", d.datasets, d.weights)  # entries name[:version][@root]
        cfg = PipelineConfig(data_root=d.root, window=lam_window(clip_len=d.clip_len, clip_stride=d.offset),
                             global_batch_size=d.batch_size, resolution=config.model.image_size, split=split,
                             seed=seed, shuffle_buffer=d.shuffle_buffer, camera=str(d.camera),
                             stats_dir=d.stats_dir or None)
        it = make_iterator(mixture, cfg)
    else:
        raise InvalidInput(f"data.source must be 'memory' or 'pipeline', got {d.source!r}")
    if want_flow and target != "ground_truth":
        from lam.flow_targets import WithFlow, estimator

        it = WithFlow(it, estimator(config.loss), context=n_ctx)
    return it


def keep_train_keys(batch: dict) -> dict:
    """Drops host-only fields (episode ids, effector positions, language) before the batch goes to devices."""
    d = batch.to_dict() if hasattr(batch, "to_dict") else batch  # the streaming pipeline yields data.batch.LAMBatch
    return {k: v for k, v in d.items() if k in TRAIN_KEYS}


class UsageLog:
    """Hook: appends {step, counts, perplexity, psnr, psnr_copy} to <workdir>/codebook_usage.jsonl every `every`.

    `every` is the log interval, so its steps are the loop's sync steps, where it gets the state (`deferred`)."""

    deferred = True

    def __init__(self, workdir: str, every: int):
        self.path, self.every = os.path.join(workdir, "codebook_usage.jsonl"), every

    def __call__(self, step: int, state: Any, metrics: dict, logger: Any) -> None:
        if step % self.every or jax.process_index() or state is None:
            return
        ms = jax.device_get(state.model_state["nsvq"][QUANTIZER])
        row = {"step": step, "counts_since_reset": np.asarray(ms["counts"]).tolist(),
               **{k: float(v) for k, v in metrics.items() if k in
                  ("perplexity", "unique_codes", "psnr", "psnr_copy", "rec", "flow", "codebook/replaced")}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, overwrite: bool = False) -> Any:
    """Runs the shared loop; returns its RunResult."""
    from latent_pretraining.training import loop

    # a bad mesh / batch fails before any work
    loop.validate(config.train, batch_size=config.data.batch_size, batch_name="data.batch_size")
    workdir = os.path.abspath(workdir)  # orbax needs absolute paths
    init_fn = make_init_fn(config)
    n = count_params(jax.eval_shape(init_fn, jax.random.PRNGKey(0))["params"])
    logging.info("LAM %s: %.2fM params", config.preset, n / 1e6)
    it = make_data(config)
    assets = {"lam.json": json.dumps({"preset": config.preset, "codebook_size": config.model.codebook_size,
                                      "codes_per_transition": config.model.code_grid ** 2,
                                      "clip_len": config.data.clip_len, "offset": config.data.offset,
                                      "context": lam_config.context_frames(config),
                                      "image_size": config.model.image_size, "params": n})}
    clips = config.data.batch_size
    loaded = None
    if config.model.encoder.kind == "dino" and config.model.dino.weights:
        from lam import dino

        loaded = {"dino": dino.convert_hf(dino.load_safetensors(config.model.dino.weights), config.model.dino)}
        logging.info("DINOv2 weights from %s (freeze with --config.train.optimizer.frozen='(\"dino\",)')",
                     config.model.dino.weights)
    return loop.run(loaded_params=loaded, config=config.train, workdir=workdir, resume=resume, overwrite=overwrite,
                    init_fn=init_fn,
                    loss_fn=make_loss_fn(config), data=it, assets=assets, items_per_step=clips, item_name="clips",
                    hooks=[UsageLog(workdir, config.train.log.every)], batch_fn=keep_train_keys, full_config=config,
                    batch_size=config.data.batch_size, data_fingerprint=lam_data.config_fingerprint(config))


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    logging.getLogger().setLevel(logging.INFO)
    res = train(f.config, f.workdir, resume=f.resume, overwrite=f.overwrite)
    logging.info("done at step %d: %s", res.step, {k: round(v, 4) for k, v in res.metrics.items()})


if __name__ == "__main__":
    from ml_collections import config_flags

    from core import cli
    from latent_pretraining.training import loop as _loop

    config_flags.DEFINE_config_file("config", None, "LAM config, e.g. configs/lam.py:lapa_demo", lock_config=True)
    _loop.define_flags()
    cli.run_absl(main, trainer=True)
