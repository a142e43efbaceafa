"""Optimizer factory: AdamW + learning-rate schedules + clipping + weight-decay / frozen-parameter masks by regex.

Config (`default_config()`, an `ml_collections.ConfigDict`):

    lr, init_lr, end_lr          peak / start-of-warmup / end-of-decay learning rates
    schedule                     "constant" | "warmup_cosine" | "warmup_linear" (all with a linear warmup)
    warmup_steps, decay_steps    decay_steps counts the warmup too; 0 means "until total_steps"
    b1, b2, eps, mu_dtype        AdamW moments (b2 = 0.95 as in the LAPA/LWM lineage)
    weight_decay                 decoupled weight decay (AdamW)
    wd_min_ndim, wd_exclude      decay only params with ndim >= wd_min_ndim whose path matches no wd_exclude regex
    clip_grad_norm               global-norm clipping over the *trainable* grads (0 disables)
    frozen                       regexes (re.search on "a/b/c" paths); matching params get no update and no decay
    grad_accum_steps             micro-batches per step (read by `step.make_train_step`)
    ema_decay                    0 disables; else EMA of params kept in TrainState.ema_params

Frozen params are routed to `optax.set_to_zero()` through `optax.multi_transform`, and `step.apply_updates` keeps
them bitwise (it never adds a zero update to them, so even -0.0 survives).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")


def default_config() -> ml_collections.ConfigDict:
    """The optimizer section of a training config."""
    c = ml_collections.ConfigDict()
    c.lr = 3e-4
    c.init_lr = 0.0
    c.end_lr = 0.0
    c.schedule = "warmup_cosine"
    c.warmup_steps = 0
    c.decay_steps = 0
    c.b1 = 0.9
    c.b2 = 0.95
    c.eps = 1e-8
    c.mu_dtype = "float32"
    c.weight_decay = 0.0
    c.wd_min_ndim = 2
    c.wd_exclude = ("norm", "bias", "scale")
    c.clip_grad_norm = 1.0
    c.frozen = ()
    c.grad_accum_steps = 1
    c.ema_decay = 0.0
    return c


def path_str(path: Sequence[Any]) -> str:
    """'a/b/c' for a jax key path (dict keys, attribute names and sequence indices)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def regex_mask(params: PyTree, patterns: Sequence[str]) -> PyTree:
    """Bool tree: True where the param path matches any of the regexes (re.search)."""
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(path_str(path)) for c in compiled), params
    )


def trainable_mask(params: PyTree, config: ml_collections.ConfigDict) -> PyTree:
    """Bool tree: False for params matching `config.frozen`."""
    return jax.tree.map(lambda f: not f, regex_mask(params, tuple(config.frozen)))


def weight_decay_mask(params: PyTree, config: ml_collections.ConfigDict) -> PyTree:
    """Bool tree: True where weight decay applies (ndim >= wd_min_ndim, no wd_exclude match, not frozen)."""
    excluded = regex_mask(params, tuple(config.wd_exclude))
    trainable = trainable_mask(params, config)
    return jax.tree.map(
        lambda p, ex, tr: bool(tr and not ex and jnp.ndim(p) >= config.wd_min_ndim), params, excluded, trainable
    )


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule (a function of the optimizer step) from the config."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={config.schedule!r} is not one of {SCHEDULES}")
    warmup = int(config.warmup_steps)
    decay = int(config.decay_steps) or int(total_steps)
    if decay < warmup:
        raise ValueError(f"optimizer.decay_steps={decay} must be >= warmup_steps={warmup} (it includes the warmup)")
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(config.init_lr, config.lr, warmup, max(decay, 1), config.end_lr)
    if config.schedule == "constant":
        tail = optax.constant_schedule(config.lr)
    else:
        tail = optax.linear_schedule(config.lr, config.end_lr, max(decay - warmup, 1))
    if warmup == 0:
        return tail
    return optax.join_schedules([optax.linear_schedule(config.init_lr, config.lr, warmup), tail], [warmup])


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int, params: PyTree
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule) for `params` (concrete or abstract: only paths and ndims are read).

    The trainable branch is clip -> AdamW(with decay mask); frozen params get `set_to_zero` (no optimizer state).
    """
    schedule = make_schedule(config, total_steps)
    chain = []
    if config.clip_grad_norm and config.clip_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(config.clip_grad_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            mu_dtype=jnp.dtype(config.mu_dtype),
            weight_decay=config.weight_decay,
            mask=weight_decay_mask(params, config),
        )
    )
    train_tx = optax.chain(*chain)
    if not config.frozen:
        return train_tx, schedule
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params, config))
    if not any(label == "train" for label in jax.tree.leaves(labels)):
        raise ValueError(f"optimizer.frozen={tuple(config.frozen)} freezes every parameter")
    tx = optax.multi_transform({"train": train_tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def count_params(params: PyTree, mask: PyTree | None = None) -> int:
    """Number of scalars in `params` (only where `mask` is True, if given)."""
    sizes = jax.tree.map(lambda p: int(jnp.size(p)), params)
    if mask is not None:
        sizes = jax.tree.map(lambda s, m: s if m else 0, sizes, mask)
    return int(sum(jax.tree.leaves(sizes)))

