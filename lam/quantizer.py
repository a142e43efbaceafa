"""NSVQ (noise-substitution vector quantization) with dead-code replacement that keeps one codebook on every device.

Training forward emits z + (‖z − c‖ / ‖n‖)·n with n ~ N(0, I) per vector (c the nearest code), so gradients reach the
encoder through z and the codebook through ‖z − c‖, with no straight-through estimator or commitment loss. Inference
emits c itself. The argmin ids are the latent actions.

Variables of `NSVQ` (a module inside the LAM):
  params/codebook   float[K, D]   trained by the optimizer (init N(0, 1))
  nsvq/shift        float[K, D]   replacement offset: the effective codebook is codebook + shift
  nsvq/counts       float[K]      assignments since the last replacement (global: counted inside the jitted step)
  nsvq/calls        int32[]       training forward passes so far (the replacement schedule's clock)

With `normalize`, z and the codes are l2-normalized before the lookup and the noise substitution (cosine codes: a
code stands for a direction of z, whatever its length).

With `groups` = G > 1 (one codebook per code slot), z is float[..., G, D], and the variables gain a leading group
axis: codebook / shift float[G, K, D], counts float[G, K]. Slot g's id indexes codebook g; dead-code replacement runs
per group on that group's usage.

Replacement is a pure function of (params, nsvq state, encoder outputs, rng) run inside the jitted train step, so under
jit/GSPMD it sees the global batch and produces one identical result on every replica (LAPA's PyTorch version ran
per rank and could desynchronize). Writing the new code into `shift` instead of the param is equivalent to LAPA's
in-place `codebook.data` overwrite that keeps the optimizer moments, and keeps params purely optimizer-owned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# (first_step, last_step, every): LAPA's schedule (steps 10-90 every 10, 100-900 every 100, 1000-4500 every 500)
LAPA_SCHEDULE = ((10, 90, 10), (100, 900, 100), (1000, 4500, 500))
# ViPRA's: 100-1k every 100, <=10k every 1k, <=40k every 2k, <=90k every 3k, then every 5k until 120k
VIPRA_SCHEDULE = ((100, 1000, 100), (2000, 10000, 1000), (12000, 40000, 2000), (42000, 90000, 3000),
                  (95000, 120000, 5000))


def nearest(z: Array, codebook: Array) -> Array:
    """Ids int32[...] of the nearest code (L2) for z float[..., D], codebook float[K, D]; or, grouped, for
    z float[..., G, D], codebook float[G, K, D] (slot g searches codebook g)."""
    if codebook.ndim == 3:
        zc = jnp.einsum("...gd,gkd->...gk", z, codebook)
    else:
        zc = z @ codebook.T
    d = jnp.sum(z * z, -1, keepdims=True) - 2 * zc + jnp.sum(codebook * codebook, -1)
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def lookup(codebook: Array, ids: Array) -> Array:
    """Code vectors float[..., D] for ids int32[...] (codebook float[K, D]); grouped: ids int32[..., G] index
    codebook float[G, K, D] per group."""
    if codebook.ndim == 3:
        return codebook[jnp.arange(codebook.shape[0]), ids]
    return codebook[ids]


def usage(ids: Array, num_codes: int, groups: int = 1) -> Array:
    """Assignment counts float[K] (grouped: float[G, K], ids int32[..., G])."""
    if groups == 1:
        return jnp.bincount(ids.ravel(), length=num_codes).astype(jnp.float32)
    return jnp.sum(jax.nn.one_hot(ids.reshape(-1, groups), num_codes, dtype=jnp.float32), axis=0)


def l2_normalize(x: Array) -> Array:
    """x float[..., D] scaled to unit L2 norm along the last axis."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)


class NSVQ(nn.Module):
    """z float[..., D] → (quantized float[..., D], ids int32[...]). Needs an 'nsvq' rng when train=True."""

    num_codes: int = 8
    dim: int = 32
    warmup_steps: int = 0  # training passes z through unquantized for this many calls (then every code restarts)
    normalize: bool = False  # l2-normalized z and codes (cosine-similarity lookup, as in ViT-VQGAN)
    groups: int = 1  # >1: one codebook per slot; z is then float[..., groups, D]

    @nn.compact
    def __call__(self, z: Array, *, train: bool) -> tuple[Array, Array]:
        lead = (self.groups,) if self.groups > 1 else ()
        if lead and z.shape[-2] != self.groups:
            raise ValueError(f"NSVQ with groups={self.groups} needs z float[..., {self.groups}, {self.dim}], "
                             f"got shape {z.shape}")
        codebook = self.param("codebook", nn.initializers.normal(1.0), (*lead, self.num_codes, self.dim))
        shift = self.variable("nsvq", "shift", jnp.zeros, (*lead, self.num_codes, self.dim))
        counts = self.variable("nsvq", "counts", jnp.zeros, (*lead, self.num_codes))
        calls = self.variable("nsvq", "calls", lambda: jnp.zeros((), jnp.int32))
        cb = codebook + jax.lax.stop_gradient(shift.value)
        z = z.astype(jnp.float32)
        if self.normalize:
            z, cb = l2_normalize(z), l2_normalize(cb)
        ids = nearest(jax.lax.stop_gradient(z), jax.lax.stop_gradient(cb))
        q = lookup(cb, ids)
        if not train:
            return q, ids
        noise = jax.random.normal(self.make_rng("nsvq"), z.shape, z.dtype)
        err = jnp.linalg.norm(z - q, axis=-1, keepdims=True)
        out = z + err / (jnp.linalg.norm(noise, axis=-1, keepdims=True) + 1e-12) * noise
        if self.warmup_steps:
            out = jnp.where(calls.value < self.warmup_steps, z, out)
        if self.is_mutable_collection("nsvq") and not self.is_initializing():
            counts.value = counts.value + usage(ids, self.num_codes, self.groups)
            calls.value = calls.value + 1
        return out, ids


def effective_codebook(codebook: Array, state: dict[str, Array]) -> Array:
    """The codebook the quantizer uses: param + replacement shift, float[K, D] (grouped: float[G, K, D])."""
    return codebook + state["shift"]


def perplexity(counts: Array) -> Array:
    """exp(entropy) of a usage histogram float[K] (K when uniform, 1 when one code)."""
    p = counts / jnp.maximum(jnp.sum(counts), 1e-9)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0)))


def is_replace_step(step: Array, schedule: Sequence[Sequence[int]]) -> Array:
    """True where `step` is on the schedule ((first, last, every), ...)."""
    hit = jnp.zeros((), bool)
    for first, last, every in schedule:
        hit = hit | ((step >= first) & (step <= last) & (step % every == 0))
    return hit


def replace_dead_codes(codebook: Array, state: dict[str, Array], vectors: Array, rng: Array, *,
                       schedule: Sequence[Sequence[int]], threshold: float, source: str = "batch",
                       noise: float = 1e-3, warmup_steps: int = 0) -> tuple[dict[str, Array], dict[str, Array]]:
    """One scheduled dead-code replacement (no-op off schedule); returns (new nsvq state, metrics).

    Args:
      codebook: the param float[K, D]; state: {'shift', 'counts', 'calls'} after this step's forward pass.
        Grouped (float[G, K, D], counts float[G, K]): each group is replaced on its own usage and vectors.
      vectors: this step's (global) pre-quantization vectors float[N, D] (grouped: float[..., G, D]); used when
        source='batch'.
      threshold: a code is dead if its share of the assignments since the last replacement is below this.
      warmup_steps: at this call count (the end of an unquantized warm-up) every code restarts, whatever its use.
      source: 'batch' (a dead code restarts at a random encoder vector of the batch, k-means style) or 'codes'
        (a copy of a random used code, as in LAPA/ViPRA); both add `noise`·N(0, 1)·rms(vectors).
    """
    if source not in ("batch", "codes"):
        raise ValueError(f"quantizer.replace_source must be 'batch' or 'codes', got {source!r}")
    if codebook.ndim == 3:  # one codebook per slot: the same replacement, vmapped over the group axis
        g, _, dim = codebook.shape
        calls = state["calls"]

        def one(cb, shift, counts, vecs, r):
            return replace_dead_codes(cb, {"shift": shift, "counts": counts, "calls": calls}, vecs, r,
                                      schedule=schedule, threshold=threshold, source=source, noise=noise,
                                      warmup_steps=warmup_steps)

        new, m = jax.vmap(one)(codebook, state["shift"], state["counts"],
                               jnp.swapaxes(vectors.reshape(-1, g, dim), 0, 1), jax.random.split(rng, g))
        metrics = {"codebook/replaced": jnp.sum(m["codebook/replaced"]),
                   "codebook/perplexity_since_reset": jnp.mean(m["codebook/perplexity_since_reset"])}
        return {**new, "calls": calls}, metrics
    counts, calls = state["counts"], state["calls"]
    cb = effective_codebook(codebook, state)
    k = cb.shape[0]
    share = counts / jnp.maximum(jnp.sum(counts), 1.0)
    force = (calls == warmup_steps) if warmup_steps else jnp.zeros((), bool)
    dead = (share < threshold) | force
    used = ~dead
    r_pick, r_noise = jax.random.split(rng)
    vectors = jax.lax.stop_gradient(vectors.reshape(-1, cb.shape[1]).astype(jnp.float32))
    rms = jnp.sqrt(jnp.mean(vectors * vectors) + 1e-12)
    if source == "batch":
        idx = jax.random.choice(r_pick, vectors.shape[0], (k,), replace=vectors.shape[0] < k)
        cand = vectors[idx]
    else:
        p = jnp.where(jnp.any(used), used / jnp.maximum(jnp.sum(used), 1), jnp.ones(k) / k)
        cand = cb[jax.random.choice(r_pick, k, (k,), p=p)]
    cand = cand + noise * rms * jax.random.normal(r_noise, cand.shape)
    new_cb = jnp.where(dead[:, None], cand, cb)
    do = is_replace_step(calls, schedule) | force
    new_state = {
        "shift": jnp.where(do, new_cb - codebook, state["shift"]),
        "counts": jnp.where(do, jnp.zeros_like(counts), counts),
        "calls": calls,
    }
    metrics = {"codebook/replaced": jnp.where(do, jnp.sum(dead), 0).astype(jnp.float32),
               "codebook/perplexity_since_reset": perplexity(counts)}
    return new_state, metrics


def find_state(tree: Any, path: Sequence[str]) -> Any:
    """tree[path[0]][path[1]]... with a clear error."""
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise KeyError(f"quantizer variables not found at {'/'.join(path[: i + 1])} (have {have})")
        node = node[key]
    return node
