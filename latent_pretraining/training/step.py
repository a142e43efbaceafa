"""The train step: a pure function (state, batch) -> (state, metrics), jitted with shardings and a donated state.

The caller supplies the loss:

    loss_fn(params, batch, rng)                -> (loss, metrics)                    # no extra collections
    loss_fn(params, batch, rng, model_state)   -> (loss, (metrics, new_model_state)) # if state.model_state is set

`metrics` should hold every loss term (scalars); the step adds `loss`, `grad_norm` (trainable grads, before
clipping), `param_norm`, `update_norm`, `lr` and `nonfinite` (1.0 if the loss or the grads were NaN/inf).
With `grad_accum_steps = n` the batch's leading dim is split into n micro-batches scanned sequentially (grads and
metrics averaged; micro-batch i uses fold_in(step_rng, i)), so n micro-batches of b equal one step on n*b.
With `skip_nonfinite=True` a non-finite step leaves params / optimizer state / EMA unchanged (the step counter
still advances); otherwise the host-side guard (`check_finite`) stops the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from latent_pretraining.training.state import TrainState

PyTree = Any
LossFn = Callable[..., tuple[jax.Array, Any]]


class NonFiniteError(FloatingPointError):
    """A metric became NaN or inf."""


def tree_norm(tree: PyTree) -> jax.Array:
    """Global L2 norm of a tree (f32 accumulation)."""
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros((), jnp.float32)


def apply_updates(params: PyTree, updates: PyTree, trainable: PyTree | None) -> PyTree:
    """params + updates in the param dtype; frozen leaves (trainable False) are returned untouched (bitwise)."""
    if trainable is None:
        return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    return jax.tree.map(lambda p, u, t: (p + u).astype(p.dtype) if t else p, params, updates, trainable)


def _split_micro(batch: PyTree, n: int) -> PyTree:
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch dim {x.shape[0]} is not divisible by grad_accum_steps={n}")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    schedule: optax.Schedule | None = None,
    trainable: PyTree | None = None,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, PyTree], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns the pure step function (jit it with `jit_train_step`).

    Args:
      loss_fn: see module docstring.
      tx: optimizer; schedule: its learning-rate schedule (for the `lr` metric).
      trainable: bool tree (`optim.trainable_mask`); False leaves get no update, and their grads are excluded from
        `grad_norm`. None = everything trainable.
      grad_accum_steps: micro-batches per step; ema_decay: 0 disables the EMA update.
      skip_nonfinite: keep the old params/opt state when the loss or grads are not finite.
    """
    n = int(grad_accum_steps)

    def grads_of(params, batch, rng, model_state):
        def f(p):
            if model_state is None:
                loss, metrics = loss_fn(p, batch, rng)
                return loss, (metrics, None)
            loss, (metrics, new_ms) = loss_fn(p, batch, rng, model_state)
            return loss, (metrics, new_ms)

        (loss, (metrics, new_ms)), grads = jax.value_and_grad(f, has_aux=True)(params)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}
        metrics["loss"] = loss.astype(jnp.float32)
        return grads, metrics, new_ms

    def train_step(state: TrainState, batch: PyTree) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        if n == 1:
            grads, metrics, model_state = grads_of(state.params, batch, rng, state.model_state)
        else:
            micro = _split_micro(batch, n)

            def body(carry, xs):
                acc, ms = carry
                i, mb = xs
                g, m, ms = grads_of(state.params, mb, jax.random.fold_in(rng, i), ms)
                acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g)
                return (acc, ms), m

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            (acc, model_state), ms = jax.lax.scan(body, (zeros, state.model_state), (jnp.arange(n), micro))
            grads = jax.tree.map(lambda a, p: (a / n).astype(p.dtype), acc, state.params)
            metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), ms)

        if trainable is not None:
            grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = apply_updates(state.params, updates, trainable)
        ema = state.ema_params
        if ema is not None and ema_decay > 0:
            ema = jax.tree.map(lambda e, p: (ema_decay * e + (1.0 - ema_decay) * p).astype(e.dtype), ema, params)

        metrics["grad_norm"] = tree_norm(grads)
        metrics["param_norm"] = tree_norm(params)
        metrics["update_norm"] = tree_norm(updates)
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        metrics["nonfinite"] = (~finite).astype(jnp.float32)

        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                            model_state=model_state)
        if skip_nonfinite:
            keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)
            new = new.replace(
                params=keep(new.params, state.params),
                opt_state=keep(new.opt_state, state.opt_state),
                ema_params=keep(new.ema_params, state.ema_params),
                model_state=keep(new.model_state, state.model_state),
            )
        return new, metrics

    return train_step


def jit_train_step(step_fn: Callable, state_shardings: TrainState, batch_shardings: PyTree) -> Callable:
    """jax.jit with explicit in/out shardings and the state donated (metrics come back replicated)."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def check_finite(metrics: Mapping[str, Any], step: int, *, skip: bool = False) -> bool:
    """Host-side guard on fetched metrics. Raises `NonFiniteError` naming the step and the metric(s).

    Returns True if the step was fine. With `skip=True` (the step already skipped the update on device) a
    non-finite step only returns False, so the caller can log it.
    """
    bad = [k for k, v in metrics.items() if k != "nonfinite" and not np.all(np.isfinite(np.asarray(v)))]
    if metrics.get("nonfinite", 0.0) and not bad:
        bad = ["grad_norm"]
    if not bad:
        return True
    if skip:
        return False
    values = ", ".join(f"{k}={float(np.asarray(metrics[k]).mean())}" for k in bad)
    raise NonFiniteError(
        f"non-finite metric at step {step}: {values}. Stopping before this state is checkpointed; the last "
        "checkpoint is intact (set train.skip_nonfinite=True to skip such updates instead)."
    )

