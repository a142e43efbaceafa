"""Samplers for the VideoLLaMA policies: flow-matching action chunks (naive and prefix-KV-cached) and greedy /
seeded autoregressive decoding of discrete tokens (latent actions, LAPA action bins).

Shapes (B rows, L layout length, H action slots, A action dim, P = ``spec.action_positions[0]``):

- ``seq``: a ``latent_pretraining.sequence.Sequence`` assembled with ``action_row=True`` (the action suffix); only
  ``ids``, ``family``, ``attention_mask`` and ``block_ids`` are read; ids at the action slots are ignored.
- ``noise``: f32[B, H, A], x at t = 0 (ViPRA convention: noise at t = 0, data at t = 1; ``latent_pretraining.flow``).
- flow samplers return f32[B, H, A] (normalized actions, unclipped); ``greedy_decode`` returns int32[B, n] ids local
  to the decoded family's table.

``flow_sample_naive`` runs the whole sequence at every integration step (ViPRA ``generate_action_naive``).
``flow_sample_cached`` runs the prefix [0, P) ONCE into a ``KVCache`` of capacity P + H and then, at every step,
only the H action slots against that same prefix cache (caches are functional values: nothing is rewound, the
cache returned by a step is dropped). Position ids continue after the prefix (``cache.next_position`` = number of
real prefix tokens, as ``default_positions`` numbers the full sequence), causal masking inside the chunk comes from
the cache offsets, and a bidirectional chunk (``spec.bidirectional_actions``) passes the slots' ``block_ids``, which
``make_attention_mask`` applies among the tokens of the current call. Tokens after the chunk ("</action>", EOS,
padding) are invisible to the slots in both modes, so both samplers agree to float rounding (tests: <= 1e-5 in
float32).

The heads of the table (latent_pretraining/model/heads.py) own the per-step rule: a discrete head picks ids
(``TokenHead.pick``: argmax or a seeded categorical draw), the flow head integrates its velocity from noise
(``FlowHead.sample``); the decoded family is the head's family. These functions only run the model.

Everything is a pure function of (params, arrays) with the model, spec, flow config and step counts static, so it
can be wrapped in ``jax.jit`` (see ``jit_flow_sample`` / ``jit_greedy_decode``). No global mode switches: the same
compiled function may be called from several threads.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from latent_pretraining import flow
from latent_pretraining.model import heads
from latent_pretraining.model.attention import KVCache
from latent_pretraining.model.video_llama import VideoLlama
from latent_pretraining.sequence import LayoutSpec, Sequence

__all__ = [
    "decode_naive", "flow_sample_cached", "flow_sample_naive", "greedy_decode", "jit_flow_sample",
    "jit_greedy_decode", "prefill",
]  # fmt: skip

PyTree = Any


def _variables(params: PyTree) -> PyTree:
    """Accepts either the params tree or ``{"params": tree}``."""
    return params if isinstance(params, dict) and set(params) == {"params"} else {"params": params}


def _slots(spec: LayoutSpec) -> np.ndarray:
    pos = np.asarray(spec.action_positions, np.int32)
    if pos.size == 0:
        raise ValueError("this layout has no continuous action slots (spec.action_slots == 0)")
    return pos


def _check_noise(noise: jax.Array, seq: Sequence, h: int) -> None:
    if noise.ndim != 3 or noise.shape[0] != seq.ids.shape[0] or noise.shape[1] != h:
        raise ValueError(f"noise must be f32[B={seq.ids.shape[0]}, H={h}, A], got {noise.shape}")


def flow_sample_naive(
    model: VideoLlama,
    params: PyTree,
    seq: Sequence,
    spec: LayoutSpec,
    noise: jax.Array,
    flow_cfg: flow.FlowConfig,
    steps: int | None = None,
    integrator: str | None = None,
) -> jax.Array:
    """Action chunk f32[B, H, A] by integrating the velocity read at ``spec.action_positions`` of a FULL forward
    pass over ``seq`` (all L positions) at every Euler / Heun evaluation."""
    pos = _slots(spec)
    _check_noise(noise, seq, pos.size)
    variables = _variables(params)
    block = seq.block_ids if spec.bidirectional_actions else None

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        out = model.apply(variables, seq.ids, seq.family, actions=x, time=t, action_positions=pos,
                          head_positions={}, attention_mask=seq.attention_mask, block_ids=block, **seq.model_inputs())
        return out.velocity

    return _flow_head().sample(velocity, noise, flow_cfg, steps, integrator)


def _flow_head() -> heads.FlowHead:
    head = heads.get("flow")
    assert isinstance(head, heads.FlowHead), head
    return head


def _token_head(name: str, family: int | None) -> heads.TokenHead:
    """The discrete head ``name`` of the table; ``family`` (if given) must be the one it predicts."""
    head = heads.get(name)
    if not isinstance(head, heads.TokenHead):
        raise ValueError(f"head {name!r} is not a discrete head: it cannot be decoded token by token")
    if family is not None and family != head.family:
        raise ValueError(f"head {name!r} predicts family {head.family}, not {family}")
    return head


def prefill(model: VideoLlama, params: PyTree, seq: Sequence, length: int, capacity: int,
            head: str | None = None) -> tuple[KVCache, jax.Array | None]:
    """Runs positions [0, length) of ``seq`` into a fresh ``KVCache`` of ``capacity`` slots.

    Returns (cache, logits f32[B, V] of ``head`` at position length-1, i.e. the prediction of token ``length``;
    None without ``head``)."""
    if not 0 < length <= capacity:
        raise ValueError(f"prefix length {length} must be in (0, capacity={capacity}]")
    b = seq.ids.shape[0]
    cache = KVCache.init(model.config.llama, b, capacity)
    hp = {} if head is None else {head: (length - 1,)}
    out = model.apply(_variables(params), seq.ids[:, :length], seq.family[:, :length], head_positions=hp,
                      attention_mask=seq.attention_mask[:, :length], cache=cache, **seq.model_inputs(length))
    return out.cache, (None if head is None else out.logits[head][:, 0])


def flow_sample_cached(
    model: VideoLlama,
    params: PyTree,
    seq: Sequence,
    spec: LayoutSpec,
    noise: jax.Array,
    flow_cfg: flow.FlowConfig,
    steps: int | None = None,
    integrator: str | None = None,
) -> jax.Array:
    """Same result as ``flow_sample_naive`` (f32[B, H, A]) with one prefix pass over [0, P) into a KV cache of
    capacity P + H, then each evaluation runs only the H action slots (family ACTION) against that prefix cache."""
    pos = _slots(spec)
    h = pos.size
    _check_noise(noise, seq, h)
    if not np.array_equal(pos, np.arange(pos[0], pos[0] + h)):
        raise ValueError("the cached sampler needs contiguous action slots")
    start = int(pos[0])
    variables = _variables(params)
    cache, _ = prefill(model, params, seq, start, start + h)
    b = seq.ids.shape[0]
    ids = jnp.zeros((b, h), jnp.int32)
    family = jnp.full((b, h), _flow_head().family, jnp.int32)
    attn = seq.attention_mask[:, pos]
    block = seq.block_ids[:, pos] if spec.bidirectional_actions else None
    local = np.arange(h, dtype=np.int32)

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        out = model.apply(variables, ids, family, actions=x, time=t, action_positions=local, head_positions={},
                          attention_mask=attn, block_ids=block, cache=cache)
        return out.velocity

    return _flow_head().sample(velocity, noise, flow_cfg, steps, integrator)


def _restrict(logits: jax.Array, vocab: int | None) -> jax.Array:
    """Masks logits beyond the first ``vocab`` ids (e.g. a latent separator, or bins a dimension does not use)."""
    if vocab is None or vocab >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab, logits, -jnp.inf)


def _forced(force: tuple[int, ...] | None, n: int) -> jax.Array | None:
    if force is None:
        return None
    if len(force) != n:
        raise ValueError(f"force has {len(force)} entries for {n} tokens")
    return jnp.asarray(force, jnp.int32)


def _apply_force(tok: jax.Array, forced: jax.Array | None, i: int | jax.Array) -> jax.Array:
    if forced is None:
        return tok
    return jnp.where(forced[i] >= 0, forced[i], tok)


def greedy_decode(
    model: VideoLlama,
    params: PyTree,
    seq: Sequence,
    spec: LayoutSpec | None,
    start: int,
    n: int,
    family: int | None,
    head: str,
    *,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    vocab: int | None = None,
    force: tuple[int, ...] | None = None,
) -> jax.Array:
    """Autoregressive decoding of ``n`` tokens of one ``family`` at absolute positions start .. start+n-1 with a
    KV cache: one prefill over ``seq`` positions [0, start) (capacity start + n), then one token per step.

    Args:
      seq: context; only positions < start are read. spec: unused (kept for a uniform signature; may be None).
      family / head: the discrete head of the table that predicts the tokens ("latent", "action_bins", ...) and
        its family (e.g. LATENT; None = the head's own family; a different one is refused).
      rng: None = greedy (argmax); else a key and ``temperature`` > 0 for seeded sampling (step i uses
        fold_in(rng, i), identical in ``decode_naive``).
      vocab: optional, only ids < vocab may be produced.
      force: optional static tuple of n ints; entries >= 0 are written instead of a prediction (e.g. the latent
        separator after every C codes), -1 = decode.
    Returns:
      int32[B, n] ids local to the family's table.
    """
    del spec
    if n < 1 or start < 1:
        raise ValueError(f"need n >= 1 and start >= 1, got n={n}, start={start}")
    pick = _token_head(head, family).pick
    variables = _variables(params)
    b = seq.ids.shape[0]
    cache, logits = prefill(model, params, seq, start, start + n, head=head)
    fam = jnp.full((b, 1), heads.get(head).family, jnp.int32)
    ones = jnp.ones((b, 1), jnp.int32)
    forced = _forced(force, n)
    first = _apply_force(pick(_restrict(logits, vocab), rng, temperature, 0), forced, 0)
    if n == 1:
        return first[:, None]

    def body(carry: tuple[KVCache, jax.Array], i: jax.Array) -> tuple[tuple[KVCache, jax.Array], jax.Array]:
        cache, tok = carry
        out = model.apply(variables, tok[:, None], fam, head_positions={head: (0,)}, attention_mask=ones,
                          cache=cache)
        nxt = _apply_force(pick(_restrict(out.logits[head][:, 0], vocab), rng, temperature, i), forced, i)
        return (out.cache, nxt), nxt

    _, rest = jax.lax.scan(body, (cache, first), jnp.arange(1, n, dtype=jnp.int32))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def decode_naive(
    model: VideoLlama,
    params: PyTree,
    seq: Sequence,
    spec: LayoutSpec | None,
    start: int,
    n: int,
    family: int | None,
    head: str,
    *,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    vocab: int | None = None,
    force: tuple[int, ...] | None = None,
) -> jax.Array:
    """Reference for ``greedy_decode``: every token is predicted by a full pass over positions [0, start + n) with
    the tokens decoded so far written into ``seq`` (n passes, no cache). int32[B, n]."""
    del spec
    token_head = _token_head(head, family)
    variables = _variables(params)
    length = start + n
    ids, fam = seq.ids[:, :length], seq.family[:, :length]
    attn = seq.attention_mask[:, :length]
    forced = _forced(force, n)
    toks = []
    for i in range(n):
        out = model.apply(variables, ids, fam, head_positions={head: (start + i - 1,)}, attention_mask=attn,
                          **seq.model_inputs(length))
        tok = _apply_force(token_head.pick(_restrict(out.logits[head][:, 0], vocab), rng, temperature, i), forced, i)
        toks.append(tok)
        ids = ids.at[:, start + i].set(tok)
        fam = fam.at[:, start + i].set(token_head.family)
        attn = attn.at[:, start + i].set(1)
    return jnp.stack(toks, axis=1)


@functools.lru_cache(maxsize=64)
def jit_flow_sample(model: VideoLlama, spec: LayoutSpec, flow_cfg: flow.FlowConfig, steps: int | None = None,
                    integrator: str | None = None, cached: bool = True) -> Any:
    """A jitted ``(params, seq, noise) -> f32[B, H, A]`` for fixed model / layout / flow settings (memoized)."""
    fn = flow_sample_cached if cached else flow_sample_naive
    return jax.jit(lambda params, seq, noise: fn(model, params, seq, spec, noise, flow_cfg, steps, integrator))


@functools.lru_cache(maxsize=64)
def jit_greedy_decode(model: VideoLlama, start: int, n: int, family: int | None, head: str, sample: bool = False,
                      temperature: float = 1.0, vocab: int | None = None, cached: bool = True,
                      force: tuple[int, ...] | None = None) -> Any:
    """A jitted ``(params, seq, rng) -> int32[B, n]`` (rng ignored unless ``sample``; memoized)."""
    fn = greedy_decode if cached else decode_naive

    def run(params: PyTree, seq: Sequence, rng: jax.Array) -> jax.Array:
        return fn(model, params, seq, None, start, n, family, head, rng=rng if sample else None,
                  temperature=temperature, vocab=vocab, force=force)

    return jax.jit(run)


def main(argv: list[str] | None = None) -> int:
    from policy.sampler_benchmark import main as bench

    return bench(argv)
