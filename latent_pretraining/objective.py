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

Every loss is owned by a head of the table (latent_pretraining/model/heads.py): `forward` collects the heads'
per-step model inputs (flow: noisy actions + time) and the positions they want evaluated, and `losses` sums
`loss_weights[head.weight_key] * head.loss(...)` over the active heads in table order. No head is named here.

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
from latent_pretraining.model import heads, vqgan
from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig
from latent_pretraining.sequence import LayoutSpec, Sequence, assemble

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
    (default `weights`). The discrete heads' loss (`heads.TokenHead.loss`) on given logits."""
    nll, hit = heads.logits_nll(logits, targets)
    return heads.token_loss(nll, hit, weights, acc_weights)


# `cross_entropy` from per-token nll f32[B, n] and hits bool[B, n] (e.g. `chunked_ce.token_nll`)
cross_entropy_from_nll = heads.token_loss


def _check_heads(config: VideoLlamaConfig, spec: LayoutSpec) -> None:
    """Every token family the layout scores needs an active head of that family (else its tokens would silently
    go untrained)."""
    for head in heads.HEADS.values():
        if head.positions(spec).size and not head.is_active(config) and not any(
                h.family == head.family for h in heads.active(config)):
            raise ValueError(f"the layout scores {heads.FAMILY_NAMES.get(head.family, head.family)} tokens but the "
                             f"model has no {head.name!r} head: VideoLlamaConfig.{head.size_field} is 0")


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
                   action_mask=batch.get("action_pad_mask"), action_token_ids=bins, action_token_valid=bins_valid,
                   proprio=batch["proprio"][:, :model.config.proprio_dim] if spec.proprio_slots else None)
    _check_heads(model.config, spec)
    kw: dict[str, Any] = {}
    extra = dict(tok)
    head_positions = {}
    for head in heads.active(model.config):
        pos = head.positions(spec)
        if not pos.size:
            continue
        # Heads share one key: the flow head is the only one drawing (noise, time), as before the table existed.
        head_kw, head_extra = head.training_inputs(r_flow, batch, spec, flow_cfg)
        kw.update(head_kw)
        extra.update(head_extra)
        # With llama.loss_chunk > 0 the discrete heads are evaluated by `losses` (chunked, rematerialized).
        if head.wants_logits(model.config):
            head_positions[head.name] = pos
    out = model.apply({"params": params}, seq.ids, seq.family, head_positions=head_positions,
                      attention_mask=seq.attention_mask,
                      block_ids=seq.block_ids if spec.bidirectional_actions else None, **kw, **seq.model_inputs())
    return seq, out, extra


def losses(spec: LayoutSpec, seq: Sequence, out: Any, extra: Mapping[str, jax.Array], loss_weights: Mapping[str, float],
           model: VideoLlama | None = None, params: PyTree | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted total and per-head metrics (loss_<head>, acc_<head>, n_<head> as each head reports them): the sum
    over the active heads of the table (all heads with logits in `out` when `model` is None) of
    `loss_weights[head.weight_key]` (0 when absent) times its loss. A discrete head missing from `out.logits`
    (`forward` with llama.loss_chunk > 0) is evaluated from `out.hidden` and its weights in `params` by
    `chunked_ce.token_nll` (needs `model` and `params`)."""
    inputs = heads.LossInputs(spec=spec, seq=seq, out=out, extra=extra,
                              config=None if model is None else model.config, params=params)
    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for head in _scored(inputs):
        loss, head_metrics = head.loss(inputs)
        metrics.update(head_metrics)
        total = total + float(loss_weights.get(head.weight_key, 0.0)) * loss
    metrics["action_rows"] = jnp.mean(seq.action_row.astype(jnp.float32))
    return total, metrics


def _scored(inputs: heads.LossInputs) -> list[heads.Head]:
    """The heads that score this batch: those with something to score in the layout (and, given a model config,
    active in it), in table order."""
    candidates = heads.HEADS.values() if inputs.config is None else heads.active(inputs.config)
    return [h for h in candidates if h.applies(inputs)]


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
    """Jitted (params, model_state, batch, rng) -> metrics + each head's evaluation metrics (e.g. the latent head's
    "latent_counts" i32[codebook] of the scored targets)."""

    def eval_fn(params, model_state, batch, rng):
        seq, out, extra = forward(model, spec, frozen, flow_cfg, cotrain_fraction, params, batch, rng,
                                  model_state["frozen"])
        _, metrics = losses(spec, seq, out, extra, loss_weights, model, params)
        inputs = heads.LossInputs(spec=spec, seq=seq, out=out, extra=extra, config=model.config, params=params)
        for head in _scored(inputs):
            metrics.update(head.eval_metrics(inputs))
        return metrics

    return jax.jit(eval_fn)
