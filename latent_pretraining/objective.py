"""The VideoLLaMA training objective: frozen tokenizers → sequence layout → model → weighted per-head losses.

    loss_fn = make_loss_fn(model, spec, frozen, weights, flow_cfg, cotrain_fraction)
    loss, (metrics, model_state) = loss_fn(params, batch, rng, model_state)   # the shared loop's signature

`model_state["frozen"]` holds the frozen tokenizers' weights ({"vqgan": params, "lam": variables}); they run inside
the step (no preprocessing pass: labels always match the LAM checkpoint the run was started with) and get no
gradient. The batch is a dict of device arrays:

    history u8[B, W, R, R, 3]   future u8[B, R, R, 3]   clip u8[B, T, R, R, 3]  clip_valid bool[B, T]
    actions f32[B, H, A]        action_pad_mask bool[B, H]   action_valid bool[B]
    prompt_ids i32[B, P]        prompt_mask bool[B, P]       (tokenized on the host)

With token caches (config.cache, latent_pretraining/token_cache.py) the host replaces history/future by `frame_ids`
i32[B, W, g²] / `future_ids` i32[B, g²] and clip/clip_valid by `latent_ids` i32[B, S, C] / `latent_valid` bool[B, S];
`tokenize` takes each part from the batch when present, else from the frozen model.

Losses: each discrete head's cross-entropy is a per-row mean over its valid targets, then a mean over the rows that
have any (the lineage averaged over all rows, counting empty rows as 0, which silently shrinks a head's weight when
row kinds are mixed); flow matching is a mean over all valid action slots of the batch (as in ViPRA).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from latent_pretraining import flow
from latent_pretraining.model import chunked_ce, vqgan
from latent_pretraining.model.video_llama import VideoLlama, head_kernel
from latent_pretraining.sequence import HEAD_FAMILIES, LayoutSpec, Sequence, action_weights, assemble, head_targets

PyTree = Any
LatentFn = Callable[[PyTree, jax.Array], jax.Array]  # (variables, clip u8[B, T, R, R, 3]) -> int32[B, T-1, C]


@dataclasses.dataclass(frozen=True)
class Frozen:
    """The frozen tokenizers (functions and static configs; their weights live in model_state["frozen"]).

    latent_clip_len: frames per LAM call T; a window's clip of S+1 frames is labelled in S/(T-1) calls whose clips
    share their boundary frames (S = the layout's latent_steps).
    """

    vision: vqgan.VQGANConfig
    latent_fn: LatentFn | None = None
    latent_clip_len: int = 2


def tokenize(frozen: Frozen, weights: Mapping[str, PyTree], batch: Mapping[str, jax.Array], spec: LayoutSpec
             ) -> dict[str, jax.Array]:
    """Image and latent-action ids of a batch: {"frames" i32[B, W, g²], "future" i32[B, g²], "latent" i32[B, S, C],
    "latent_valid" bool[B, S]} (the last three only when the layout needs them). Each part independently comes from
    the batch when the host joined it from an offline cache (`frame_ids`, `future_ids`, `latent_ids` + `latent_valid`;
    latent_pretraining/token_cache.py), else from the frozen VQGAN / LAM."""
    enc = lambda x: vqgan.encode_fn(weights["vqgan"], x, config=frozen.vision)
    out = {}
    if "frame_ids" in batch:
        out["frames"] = batch["frame_ids"]
    else:
        out["frames"] = enc(batch["history"]).reshape(batch["history"].shape[0], spec.num_frames, -1)
    b = out["frames"].shape[0]
    if spec.future_frame:
        out["future"] = batch["future_ids"] if "future_ids" in batch else enc(batch["future"]).reshape(b, -1)
    if spec.latent_steps and "latent_ids" in batch:
        out["latent"], out["latent_valid"] = batch["latent_ids"], batch["latent_valid"]
    elif spec.latent_steps:
        if frozen.latent_fn is None or "clip" not in batch:
            raise ValueError("this layout has latent actions: it needs a LAM (frozen.latent_fn) and batch['clip'] "
                             "(or latent_ids from a token cache)")
        clip, step = batch["clip"], frozen.latent_clip_len - 1
        if clip.shape[1] != spec.latent_steps + 1 or spec.latent_steps % step:
            raise ValueError(f"clip of {clip.shape[1]} frames cannot give {spec.latent_steps} transitions with a LAM "
                             f"of {frozen.latent_clip_len} frames (need S+1 frames and S divisible by T-1)")
        ids = [frozen.latent_fn(weights["lam"], clip[:, k:k + step + 1]) for k in range(0, spec.latent_steps, step)]
        out["latent"] = jnp.concatenate(ids, 1)
        out["latent_valid"] = batch["clip_valid"][:, 1:]
    return jax.tree.map(jax.lax.stop_gradient, out)


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array, acc_weights: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits f32[B, n, V], targets i32[B, n], weights bool[B, n] → (loss, accuracy, number of scored targets).

    loss: per-row mean over valid targets, then mean over rows with any; accuracy: token mean over `acc_weights`
    (default `weights`)."""
    nll, hit = _plain_nll(logits, targets)
    return cross_entropy_from_nll(nll, hit, weights, acc_weights)


def _plain_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL f32[B, n] and argmax hits bool[B, n] from full logits f32[B, n, V]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return nll, jnp.argmax(logits, axis=-1) == targets


def cross_entropy_from_nll(nll: jax.Array, hit: jax.Array, weights: jax.Array, acc_weights: jax.Array | None = None
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`cross_entropy` from per-token nll f32[B, n] and hits bool[B, n] (e.g. `chunked_ce.token_nll`)."""
    loss = chunked_ce.masked_mean_loss(nll, weights)
    aw = (weights if acc_weights is None else acc_weights).astype(jnp.float32)
    acc = jnp.sum(hit.astype(jnp.float32) * aw) / jnp.maximum(jnp.sum(aw), 1.0)
    return loss, acc, jnp.sum(aw)


def forward(model: VideoLlama, spec: LayoutSpec, frozen: Frozen, flow_cfg: flow.FlowConfig, cotrain_fraction: float,
            params: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array, weights: Mapping[str, PyTree]
            ) -> tuple[Sequence, Any, dict[str, jax.Array]]:
    """Tokenize, assemble and run the model: (sequence, model output, {"v_target", "latent"...})."""
    tok = tokenize(frozen, weights, batch, spec)
    b = batch["prompt_ids"].shape[0]
    r_row, r_flow = jax.random.split(rng)
    action_row = None
    if spec.has_action_rows and spec.has_video_rows:
        action_row = batch["action_valid"].astype(bool) & (jax.random.uniform(r_row, (b,)) < cotrain_fraction)
    bins = batch.get("action_bins")  # int32[B, H·A] (LAPA fine-tuning, tokenized on the host)
    bins_valid = None
    if bins is not None and "action_pad_mask" in batch:
        pad = batch["action_pad_mask"].astype(bool)
        bins_valid = jnp.repeat(pad, bins.shape[1] // pad.shape[1], axis=1)
    seq = assemble(spec, batch["prompt_ids"], batch["prompt_mask"], tok["frames"], future_ids=tok.get("future"),
                   latent_ids=tok.get("latent"), latent_valid=tok.get("latent_valid"), action_row=action_row,
                   action_mask=batch.get("action_pad_mask"), action_token_ids=bins, action_token_valid=bins_valid)
    kw: dict[str, Any] = {}
    extra = dict(tok)
    if spec.action_slots:
        actions = batch["actions"].astype(jnp.float32)
        x_t, t, v_target = flow.training_example(r_flow, actions, flow_cfg)
        kw = {"actions": x_t, "time": t, "action_positions": spec.action_positions}
        extra["v_target"] = v_target
    # With llama.loss_chunk > 0 the heads are evaluated by `losses` (chunked, rematerialized), not by the model.
    head_positions = {} if model.config.llama.loss_chunk > 0 else spec.head_positions()
    out = model.apply({"params": params}, seq.ids, seq.family, head_positions=head_positions,
                      attention_mask=seq.attention_mask,
                      block_ids=seq.block_ids if spec.bidirectional_actions else None, **kw)
    return seq, out, extra


def losses(spec: LayoutSpec, seq: Sequence, out: Any, extra: Mapping[str, jax.Array], loss_weights: Mapping[str, float],
           model: VideoLlama | None = None, params: PyTree | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted total and per-head metrics (loss_*, acc_*; latent accuracy counts codes, not separators). Heads:
    text, vision, latent, action_bins (weights from `loss_weights` by these names) and flow. A head missing from
    `out.logits` (`forward` with llama.loss_chunk > 0) is evaluated here from `out.hidden` and the head weights in
    `params` by `chunked_ce.token_nll` (needs `model` and `params`)."""
    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for head, pos in spec.head_positions().items():
        tgt, w = head_targets(seq, pos, HEAD_FAMILIES[head])
        acc_w = w & (tgt < spec.latent_codebook) if head == "latent" else None
        if head in out.logits:
            nll, hit = _plain_nll(out.logits[head], tgt)
        else:
            if model is None or params is None:
                raise ValueError(f"head {head!r} has no logits; pass model and params to evaluate it chunked")
            lc = model.config.llama
            hidden = out.hidden[:, jnp.asarray(pos, jnp.int32)]
            nll, hit = chunked_ce.token_nll(hidden, head_kernel(model.config, params, head), tgt,
                                            chunk=lc.loss_chunk, compute_dtype=lc.compute_dtype)
        loss, acc, n = cross_entropy_from_nll(nll, hit, w, acc_w)
        metrics[f"loss_{head}"], metrics[f"acc_{head}"], metrics[f"n_{head}"] = loss, acc, n
        total = total + float(loss_weights.get(head, 0.0)) * loss
    if spec.action_slots and out.velocity is not None:
        fl, n = flow.flow_loss(out.velocity, extra["v_target"], action_weights(seq, spec))
        metrics["loss_flow"], metrics["n_flow"] = fl, n
        total = total + float(loss_weights.get("flow", 0.0)) * fl
    metrics["action_rows"] = jnp.mean(seq.action_row.astype(jnp.float32))
    return total, metrics


def make_loss_fn(model: VideoLlama, spec: LayoutSpec, frozen: Frozen, loss_weights: Mapping[str, float],
                 flow_cfg: flow.FlowConfig, cotrain_fraction: float) -> Callable:
    """(params, batch, rng, model_state) -> (loss, (metrics, model_state)) for `loop.run`."""

    def loss_fn(params, batch, rng, model_state):
        seq, out, extra = forward(model, spec, frozen, flow_cfg, cotrain_fraction, params, batch, rng,
                                  model_state["frozen"])
        total, metrics = losses(spec, seq, out, extra, loss_weights, model, params)
        return total, (metrics, model_state)

    return loss_fn


def make_eval_fn(model: VideoLlama, spec: LayoutSpec, frozen: Frozen, loss_weights: Mapping[str, float],
                 flow_cfg: flow.FlowConfig, cotrain_fraction: float) -> Callable:
    """Jitted (params, model_state, batch, rng) -> metrics + "latent_counts" i32[codebook] of the scored targets."""

    def eval_fn(params, model_state, batch, rng):
        seq, out, extra = forward(model, spec, frozen, flow_cfg, cotrain_fraction, params, batch, rng,
                                  model_state["frozen"])
        _, metrics = losses(spec, seq, out, extra, loss_weights, model, params)
        if "latent" in spec.head_positions():
            tgt, w = head_targets(seq, spec.head_positions()["latent"], HEAD_FAMILIES["latent"])
            w = w & (tgt < spec.latent_codebook)
            metrics["latent_counts"] = jnp.zeros(spec.latent_codebook, jnp.int32).at[
                jnp.clip(tgt, 0, spec.latent_codebook - 1)].add(w.astype(jnp.int32))
        return metrics

    return jax.jit(eval_fn)
