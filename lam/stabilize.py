"""Camera-shake removal for LAM clips (`model.stabilize`): every frame is registered to the clip's first frame.

A shaking camera moves every pixel between two frames; with a handful of latent codes, the LAM then spends them on
the camera's shift (which explains the most pixels) instead of the agent's motion. On the demo world with 1 px of
jitter and 3 drifting distractors, lapa_demo's direction probe fell from 0.87 to 0.18 (below the majority class)
while its reconstruction still beat copy-last (docs/lam.md). Registration removes the global translation before the
encoder sees the clip, so what is left to encode is what moved in the scene.

- `global_shifts(clip)`: the translation of each frame relative to frame 0 by phase correlation of the
  luminance (the static, textured background and the table's edges dominate the cross-power spectrum; movers are a
  small part of it), with a parabolic sub-pixel refinement of the peak (on 64 px demo clips with 1 px jitter:
  median error 0.14 px, worst 0.46 px against the true shift);
- `stabilize(clip, reference=0)`: each frame moved back by its shift (bilinear, edge pixels repeated), so frame t
  aligns to frame 0 (or to the clip's first transition frame when it leads with a decoder context frame);
- `compensate_flow(flow)`: a flow target (ground truth or Farneback, computed on the raw frames) minus its per-pair
  median, i.e. relative to the background's motion, which is what the registered frames show.

Pure JAX and jittable: the trainer's loss, `lam.label.Labeler` (codes for the VLA and the caches) and the evaluation
apply the same transform, so a stabilized LAM never sees an unregistered clip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# numpy, not jnp: a jnp constant at import would create JAX's backend before the entry point runs (too early for
# jax.distributed.initialize and for the XLA flags that core.cli sets)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _subpixel(c_m: jax.Array, c_0: jax.Array, c_p: jax.Array) -> jax.Array:
    """Vertex offset in (-0.5, 0.5) of the parabola through (-1, c_m), (0, c_0), (1, c_p)."""
    den = c_m - 2 * c_0 + c_p
    return jnp.where(jnp.abs(den) > 1e-12, jnp.clip(0.5 * (c_m - c_p) / den, -0.5, 0.5), 0.0)


def _pair_shift(ref: jax.Array, img: jax.Array) -> jax.Array:
    """(dy, dx) such that img(y, x) ≈ ref(y - dy, x - dx), for luminance f32[H, W] each."""
    h, w = ref.shape
    # no taper window: the static structure (table edge, rim) lies near the image border, which a Hann window
    # suppresses (on jittered demo clips it then locked onto the movers: errors up to 2 px, one of the wrong sign)
    fa = jnp.fft.fft2(ref - ref.mean())
    fb = jnp.fft.fft2(img - img.mean())
    cross = fb * jnp.conj(fa)
    corr = jnp.real(jnp.fft.ifft2(cross / jnp.maximum(jnp.abs(cross), 1e-9)))
    k = jnp.argmax(corr)
    py, px = k // w, k % w
    dy = _subpixel(corr[(py - 1) % h, px], corr[py, px], corr[(py + 1) % h, px])
    dx = _subpixel(corr[py, (px - 1) % w], corr[py, px], corr[py, (px + 1) % w])
    wrap = lambda p, n: jnp.where(p > n // 2, p - n, p).astype(jnp.float32)
    return jnp.stack([wrap(py, h) + dy, wrap(px, w) + dx])


def global_shifts(clip: jax.Array, reference: int = 0) -> jax.Array:
    """clip f32[B, T, H, W, 3] → f32[B, T, 2]: (dy, dx) in pixels of each frame relative to frame `reference`
    (that row = 0)."""
    luma = clip @ jnp.asarray(_LUMA)
    per_frame = jax.vmap(_pair_shift, in_axes=(None, 0))  # over T, against the reference frame
    return jax.vmap(lambda c: per_frame(c[reference], c))(luma)


def _translate(img: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """img f32[H, W, 3] sampled at (y + dy, x + dx): bilinear, edge pixels repeated."""
    h, w = img.shape[:2]
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + dy, jnp.arange(w, dtype=jnp.float32) + dx,
                          indexing="ij")
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [yy, xx], order=1, mode="nearest")
    return jnp.stack([sample(img[..., c]) for c in range(img.shape[-1])], axis=-1)


def stabilize(clip: jax.Array, reference: int = 0) -> tuple[jax.Array, jax.Array]:
    """clip f32[B, T, H, W, 3] → (registered clip, same shape; shifts f32[B, T, 2] that were removed). Frames are
    registered to frame `reference`: a clip that leads with decoder context frames (model.decoder.context) uses its
    first transition frame, so the encoder's frames are registered exactly as the labeler registers them."""
    shifts = jax.lax.stop_gradient(global_shifts(clip, reference))
    move = jax.vmap(jax.vmap(lambda f, s: _translate(f, s[0], s[1])))
    return move(clip, shifts), shifts


def compensate_flow(flow: jax.Array) -> jax.Array:
    """flow f32[B, N, H, W, 2] → the same minus each pair's median flow (the background's, i.e. the camera's)."""
    return flow - jnp.median(flow, axis=(2, 3), keepdims=True)
