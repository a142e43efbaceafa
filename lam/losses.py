"""LAM losses: pixel L1/MSE, optional perceptual term (pluggable frozen feature network), optional optical-flow term,
optional action term (a few labelled episodes).

All take predictions and targets float[B, N, H, W, C] (N transitions) and an optional mask bool[B, N]; results are
f32 scalars averaged over valid transitions.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
FeatureFn = Callable[[Array], list[Array]]  # images float[B, H, W, 3] in [0, 1] -> feature maps [B, h, w, C]


def _masked_mean(per_item: Array, mask: Array | None) -> Array:
    """per_item float[B, N] → mean over mask."""
    if mask is None:
        return jnp.mean(per_item)
    m = mask.astype(jnp.float32)
    return jnp.sum(per_item * m) / jnp.maximum(jnp.sum(m), 1.0)


def _elementwise(diff: Array, kind: str, option: str) -> Array:
    """|diff| ('l1') or diff² ('mse'); `option` names the config key in the error."""
    if kind == "l1":
        return jnp.abs(diff)
    if kind == "mse":
        return jnp.square(diff)
    raise ValueError(f"{option} must be 'l1' or 'mse', got {kind!r}")


def pixel_loss(pred: Array, target: Array, kind: str = "l1", mask: Array | None = None, *,
               previous: Array | None = None, motion_weight: float = 0.0, weight: Array | None = None) -> Array:
    """Mean |pred − target| ('l1') or squared error ('mse').

    motion_weight > 0: pixels are weighted by 1 + motion_weight·|target − previous| (mean over channels), so the few
    pixels that change between frames (a moving effector) are not drowned by the static background.
    weight float[B, N, H, W]: a further per-pixel weight on the elementwise error (e.g. `agent_weights`)."""
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    if motion_weight > 0 and previous is not None:
        w = 1.0 + motion_weight * jnp.mean(jnp.abs(target - previous), axis=-1, keepdims=True)
        diff = diff * (jnp.sqrt(w) if kind == "mse" else w)
    err = _elementwise(diff, kind, "loss.pixel")
    if weight is not None:
        err = err * weight[..., None]
    return _masked_mean(jnp.mean(err, axis=(2, 3, 4)), mask)


def agent_weights(effector: Array, size: int, radius: float, weight: float) -> Array:
    """effector float[B, L, 2] (pixels, x right, y down) → float[B, L-1, size, size]: 1 + weight on pixels within
    `radius` px of the effector in the first or the second frame of each transition, 1 elsewhere (an oracle agent
    mask: where the agent was and went)."""
    c = jnp.arange(size, dtype=jnp.float32) + 0.5  # pixel centres
    d2 = ((c[None, None, None, :] - effector[..., 0, None, None]) ** 2
          + (c[None, None, :, None] - effector[..., 1, None, None]) ** 2)  # [B, L, H(y), W(x)]
    near = d2 <= radius**2
    return 1.0 + weight * (near[:, 1:] | near[:, :-1]).astype(jnp.float32)


def psnr(pred: Array, target: Array) -> Array:
    """Per-frame PSNR in dB for images in [0, 1]: float[B, N]."""
    mse = jnp.mean(jnp.square(jnp.clip(pred, 0, 1) - target), axis=(-3, -2, -1))
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def perceptual_loss(features: FeatureFn, pred: Array, target: Array, mask: Array | None = None) -> Array:
    """Mean L1 between unit-normalised feature maps of a frozen network (LPIPS-like without learned weights)."""
    b, n = pred.shape[:2]
    flat = lambda x: x.reshape(b * n, *x.shape[2:])
    fp, ft = features(flat(pred)), features(jax.lax.stop_gradient(flat(target)))
    unit = lambda f: f * jax.lax.rsqrt(jnp.sum(f * f, axis=-1, keepdims=True) + 1e-10)
    per = sum(jnp.mean(jnp.abs(unit(a) - unit(c)).reshape(b, n, -1), axis=-1) for a, c in zip(fp, ft, strict=True))
    return _masked_mean(per / len(fp), mask)


def flow_loss(pred: Array, target: Array, mask: Array | None = None, *, kind: str = "l1",
              moving_weight: float = 0.0, moving_threshold: float = 0.5, moving_power: float = 0.0,
              weight: Array | None = None) -> Array:
    """Mean flow error (pixels) between predicted and target flow float[B, N, H, W, 2]: per-component L1 ('l1') or
    squared error ('mse').

    moving_weight > 0: pixels whose target flow is longer than `moving_threshold` px weigh 1 + moving_weight, so the
    few moving pixels (the effector) are not drowned by the static background; with L1 on sparse targets predicting
    zero everywhere is a strong optimum, which MSE and this weighting avoid.
    moving_power > 0: the extra weight of a moving pixel is instead moving_weight · |f|^p / mean(|f|^p), the mean
    over the batch's moving pixels: the same total extra weight, shifted towards the faster movers (on the demo
    world with distractors the effector moves about twice as fast as a disc; p = 2 raises its share of the moving
    weight from 0.22 to 0.38 at clip offset 3, yet lapa_demo's direction probe fell from 0.574 to 0.418 on shaky,
    cluttered video: docs/lam.md)."""
    per = jnp.mean(_elementwise(pred.astype(jnp.float32) - target.astype(jnp.float32), kind, "loss.flow"), axis=-1)
    if moving_weight > 0:
        speed = jnp.linalg.norm(jax.lax.stop_gradient(target).astype(jnp.float32), axis=-1)
        moving = (speed > moving_threshold).astype(jnp.float32)
        if moving_power > 0:
            s = moving * speed**moving_power
            moving = s / jnp.maximum(jnp.sum(s) / jnp.maximum(jnp.sum(moving), 1.0), 1e-6)
        per = per * (1.0 + moving_weight * moving)
    if weight is not None:  # float[B, N, H, W], as in pixel_loss
        per = per * weight
    return _masked_mean(jnp.mean(per, axis=(2, 3)), mask)


def action_loss(pred: Array, target: Array, mask: Array) -> Array:
    """Mean squared error of predicted actions float[B, N, A] against target actions float[B, N, A], averaged over
    the A dimensions and the transitions where mask bool[B, N] holds (0 when none does)."""
    return _masked_mean(jnp.mean(jnp.square(pred - target), axis=-1), mask)


def flow_weight(step: Array, weight: float, start: int, warmup: int) -> Array:
    """ViPRA's schedule: 0 before `start`, then a linear ramp to `weight` over `warmup` steps."""
    ramp = jnp.clip((step - start) / max(warmup, 1), 0.0, 1.0) if warmup > 0 else (step >= start).astype(jnp.float32)
    return weight * ramp
