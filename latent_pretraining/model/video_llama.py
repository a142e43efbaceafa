"""VideoLLaMA: the LLaMA backbone with one embedding table and one output head per token family (LAPA / ViPRA).

Token ids are *local* to their family's table and a per-position ``family`` array (``TEXT`` .. ``PROPRIO``) says
which table embeds each position. Every table is looked up (ids clipped into its range) and the results are selected
with ``jnp.where`` on the family. Continuous action / proprio slots get their embedding from small encoders instead.

Parameter tree (top-level siblings; each extra only when its size in ``VideoLlamaConfig`` is > 0)::

    transformer/{wte,h,ln_f}             the backbone ``LlamaModel`` (text table wte [V_text, D])
    vte/embedding        [V_vision, D]   late/embedding [V_latent, D]   ate/embedding [V_bins, D]
    lm_head/kernel       [D, V_text]     (absent when llama.tie_embeddings: wte.attend)
    vision_head/kernel   [D, V_vision]   latent_actions_head/kernel [D, V_latent]   action_head/kernel [D, V_bins]
    velocity_head/{kernel [D, A], bias [A]}                 flow-matching velocity (ViPRA's ``action_head``)
    action_encoder/linear_{1,2,3}/{kernel,bias}             ViPRA ActionEncoder (time-conditioned)
    proprio_encoder/linear_{1,2,3}/{kernel,bias}            ViPRA proprio Encoder

The tables and heads are created from the head table (``latent_pretraining/model/heads.py``: each head names its
family, its size field above, its table and output module), so the names above are the heads' declared names.

Released LAPA / ViPRA files use other names (``dte``, ``delta_head``, a biased ``action_head``); ``from_lineage``
renames a converted tree (``latent_pretraining.convert.lwm.read_lwm_params``) to this layout.

Initialisation: every table, head and encoder kernel is normal(llama.initializer_range = 0.02), biases zero. This is
a deliberate deviation from the lineage's loader, which creates missing keys with lecun_normal from PRNGKey(0) (the
same key for every tensor) and biases 0.01·N(0, 1); normal(0.02) is what the lineage modules declare themselves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from core.lookup import check_names
from latent_pretraining.model import heads
from latent_pretraining.model.attention import KVCache
from latent_pretraining.model.heads import ACTION, ACTION_BIN, LATENT, PROPRIO, TEXT, VISION
from latent_pretraining.model.llama import LlamaModel
from latent_pretraining.model.llama_config import LlamaConfig
from latent_pretraining.model.llama_layers import Linear
from latent_pretraining.training.sharding import with_logical_constraint

__all__ = [
    "ACTION", "ACTION_BIN", "HEAD_FAMILY", "LATENT", "PROPRIO", "TEXT", "VISION", "ActionEncoder", "ProprioEncoder",
    "VideoLlama", "VideoLlamaConfig", "VideoLlamaOutput", "abstract_params", "count_params", "from_lineage",
    "init_params", "sinusoidal_embedding",
]  # fmt: skip

# head name -> the family whose table it predicts (a live view of the head table, latent_pretraining/model/heads.py)
HEAD_FAMILY: Mapping[str, int] = heads.TOKEN_FAMILIES

Positions = Sequence[int] | jax.Array | np.ndarray


@dataclasses.dataclass(frozen=True)
class VideoLlamaConfig:
    """Backbone config plus the sizes of the extra token families (0 = that table / head / encoder is absent).

    Attributes:
      llama: the backbone; its ``vocab_size`` is the text vocabulary.
      vision_vocab_size: VQGAN codes + specials (eof = codebook size, eov = codebook size + 1).
      latent_vocab_size: LAM codes + separator (eola).
      action_vocab_size: discretised action bins (LAPA).
      action_dim: continuous action width (action encoder + velocity head, ViPRA).
      proprio_dim: proprioception width (proprio encoder).
    """

    llama: LlamaConfig
    vision_vocab_size: int = 8448
    latent_vocab_size: int = 9
    action_vocab_size: int = 256
    action_dim: int = 7
    proprio_dim: int = 0

    def __post_init__(self) -> None:
        for f in (f.name for f in dataclasses.fields(self) if f.name != "llama"):  # every size, a new head's too
            if getattr(self, f) < 0:
                raise ValueError(f"VideoLlamaConfig.{f}={getattr(self, f)} must be >= 0")
        if self.action_dim and self.llama.hidden_size % 4:
            raise ValueError(f"the action encoder needs hidden_size % 4 == 0, got {self.llama.hidden_size}")
        if self.proprio_dim and self.llama.hidden_size % 2:
            raise ValueError(f"the proprio encoder needs an even hidden_size, got {self.llama.hidden_size}")

    @property
    def active_heads(self) -> tuple[str, ...]:
        """Names of the discrete heads present, in table order (e.g. ``("text", "vision", "latent")``)."""
        return tuple(h.name for h in heads.active(self) if h.discrete)

    def head_vocab(self, name: str) -> int:
        """Output size of a head (vocabulary of a discrete head; ``action_dim`` for "flow")."""
        return heads.get(name).size(self)

    def replace(self, **overrides: Any) -> VideoLlamaConfig:
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with ``llama`` nested as a dict (round-trips through ``from_dict``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["llama"] = self.llama.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VideoLlamaConfig:
        """Inverse of ``to_dict`` (``llama`` may be a dict or a ``LlamaConfig``; unknown keys raise)."""
        d = dict(d)
        check_names(d, [f.name for f in dataclasses.fields(cls)], "VideoLlamaConfig field", list_known=False)
        llama = d.pop("llama")
        if not isinstance(llama, LlamaConfig):
            llama = LlamaConfig.from_dict(llama)
        return cls(llama=llama, **d)


@struct.dataclass
class VideoLlamaOutput:
    """``logits``: head name -> f32 ``[B, n, V_head]`` at that head's requested positions; ``velocity``: f32
    ``[B, S, action_dim]`` at the action slots (None without ``actions``); ``hidden [B, L, D]`` after ln_f."""

    logits: dict[str, jax.Array]
    velocity: jax.Array | None
    hidden: jax.Array
    cache: KVCache | None = None


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """ViPRA ``SinusoidalPosEmb``: ``t [B]`` (raw, in [0, 1)) -> f32 ``[B, dim]`` = [sin(t·f), cos(t·f)] with
    ``dim // 2`` frequencies f_k = exp(-ln(1e4)·k / (dim//2 - 1))."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ActionEncoder(nn.Module):
    """ViPRA ActionEncoder: ``(actions [B, S, A], time [B]) -> [B, S, D]``.

    linear_1: A -> D/2 (no activation); concat [sinusoidal(time, D/2), that] -> D; linear_2 D -> D, SiLU; linear_3.
    """

    config: LlamaConfig

    @nn.compact
    def __call__(self, actions: jax.Array, time: jax.Array) -> jax.Array:
        cfg = self.config
        d = cfg.hidden_size
        b, s, _ = actions.shape
        t_emb = sinusoidal_embedding(jnp.broadcast_to(time, (b,)), d // 2).astype(cfg.compute_dtype)
        a_emb = Linear(d // 2, (None, "mlp"), cfg, use_bias=True, name="linear_1")(actions)
        h = jnp.concatenate([jnp.broadcast_to(t_emb[:, None, :], (b, s, d // 2)), a_emb], axis=-1)
        h = nn.silu(Linear(d, ("embed", "mlp"), cfg, use_bias=True, name="linear_2")(h))
        return Linear(d, ("mlp", "embed"), cfg, use_bias=True, name="linear_3")(h)


class ProprioEncoder(nn.Module):
    """ViPRA proprio Encoder: ``[B, P, proprio_dim] -> [B, P, D]``; linear_1 -> D/2, linear_2 D/2 -> D/2 + SiLU,
    linear_3 -> D."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, proprio: jax.Array) -> jax.Array:
        cfg = self.config
        d = cfg.hidden_size
        h = Linear(d // 2, (None, "mlp"), cfg, use_bias=True, name="linear_1")(proprio)
        h = nn.silu(Linear(d // 2, ("mlp", "embed"), cfg, use_bias=True, name="linear_2")(h))
        return Linear(d, ("mlp", "embed"), cfg, use_bias=True, name="linear_3")(h)


def _positions(pos: Positions) -> jax.Array:
    return jnp.asarray(pos, dtype=jnp.int32).reshape(-1)


def _overwrite(x: jax.Array, family: jax.Array, pos: Positions, values: jax.Array, fam: int) -> jax.Array:
    """Sets ``x[:, pos] = values`` in the rows whose family at those positions is ``fam`` (others keep theirs)."""
    p = _positions(pos)
    if values.shape[1] != p.shape[0]:
        raise ValueError(f"{values.shape[1]} encoder slots but {p.shape[0]} positions")
    old = x[:, p]
    new = jnp.where((family[:, p] == fam)[..., None], values.astype(x.dtype), old)
    return x.at[:, p].set(new)


class VideoLlama(nn.Module):
    """Multimodal LLaMA: per-family embeddings and heads around ``LlamaModel`` (see the module docstring)."""

    config: VideoLlamaConfig

    def setup(self) -> None:
        cfg, lc = self.config, self.config.llama
        self.transformer = LlamaModel(lc)
        # every active head of the table: its family's input table (if it has one) and its output layer, under the
        # parameter names the head declares (checkpoint layout)
        for head in heads.active(cfg):
            if head.table:
                setattr(self, head.table, head.build_table(cfg))
            out = head.build(cfg)
            if out is not None:
                setattr(self, head.module, out)
        if cfg.action_dim:  # the input side of the flow head: noisy actions + time -> embeddings at the slots
            self.action_encoder = ActionEncoder(lc)
        if cfg.proprio_dim:
            self.proprio_encoder = ProprioEncoder(lc)

    def _tables(self) -> list[tuple[int, int, Any]]:
        """(family, vocabulary, embed module) of every input table: the text table, then the heads' tables."""
        cfg = self.config
        out = [(TEXT, cfg.llama.vocab_size, self.transformer.embed)]
        out += [(h.family, h.size(cfg), getattr(self, h.table)) for h in heads.active(cfg) if h.table]
        return out

    def embed_inputs(
        self,
        ids: jax.Array,
        family: jax.Array,
        *,
        actions: jax.Array | None = None,
        time: jax.Array | None = None,
        action_positions: Positions | None = None,
        proprio: jax.Array | None = None,
        proprio_positions: Positions | None = None,
    ) -> jax.Array:
        """Input embeddings ``[B, L, D]`` (compute dtype) from local ``ids [B, L]`` and ``family [B, L]``.

        Positions of a family without a table (ACTION, PROPRIO) take the text row of their id unless an encoder
        output replaces them. Encoder outputs replace the embedding at ``action_positions`` / ``proprio_positions``
        only in rows whose family there is ACTION / PROPRIO.
        """
        cfg = self.config
        ids = ids.astype(jnp.int32)
        x = None
        for fam, vocab, table in self._tables():
            emb = table(jnp.clip(jnp.where(family == fam, ids, 0), 0, vocab - 1))
            x = emb if x is None else jnp.where((family == fam)[..., None], emb, x)
        if actions is not None:
            if not cfg.action_dim:
                raise ValueError("actions given but VideoLlamaConfig.action_dim == 0 (no action encoder)")
            if time is None or action_positions is None:
                raise ValueError("continuous actions need time [B] and action_positions [S]")
            x = _overwrite(x, family, action_positions, self.action_encoder(actions, time), ACTION)
        if proprio is not None:
            if not cfg.proprio_dim:
                raise ValueError("proprio given but VideoLlamaConfig.proprio_dim == 0 (no proprio encoder)")
            if proprio_positions is None:
                raise ValueError("proprio needs proprio_positions [P]")
            x = _overwrite(x, family, proprio_positions, self.proprio_encoder(proprio), PROPRIO)
        return x

    def head(self, name: str, hidden: jax.Array) -> jax.Array:
        """Head ``name`` of the table on ``hidden [B, n, D]`` -> f32 ``[B, n, size]`` (logits of a discrete head)."""
        head = heads.get(name)
        if not head.is_active(self.config):
            raise ValueError(f"head {name!r} is not active; active heads: {self.config.active_heads}")
        out = head.apply(self, hidden)
        return with_logical_constraint(out.astype(jnp.float32), ("batch", "length", "act_vocab"))

    def init_all_heads(self, ids: jax.Array, family: jax.Array, **kw: Any) -> VideoLlamaOutput:
        """``__call__`` plus every active head of the table on the hidden states, so that ``init`` creates the
        parameters of heads the plain call does not reach (e.g. a continuous head evaluated only on request)."""
        out = self(ids, family, **kw)
        for head in heads.active(self.config):
            self.head(head.name, out.hidden[:, :1])
        return out

    def __call__(
        self,
        ids: jax.Array,
        family: jax.Array,
        *,
        actions: jax.Array | None = None,
        time: jax.Array | None = None,
        action_positions: Positions | None = None,
        proprio: jax.Array | None = None,
        proprio_positions: Positions | None = None,
        head_positions: Mapping[str, Positions] | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        block_ids: jax.Array | None = None,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> VideoLlamaOutput:
        """Forward pass.

        Args:
          ids: ``[B, L]`` int32 ids local to each family's table; family: ``[B, L]`` int (TEXT .. PROPRIO).
          actions: ``[B, S, action_dim]`` noisy actions x_t; time: ``[B]`` flow time; action_positions: ``[S]``
            slots in this call (static tuple or int array, shared by all rows).
          proprio: ``[B, P, proprio_dim]`` at ``proprio_positions [P]``.
          head_positions: head name -> ``[n]`` positions where it is evaluated (any head of the table, discrete
            or continuous: its output lands in ``logits[name]``); unlisted heads are skipped; None = every active
            discrete head at every position.
          attention_mask, position_ids, block_ids, mask, cache: as in ``LlamaModel``.
        """
        x = self.embed_inputs(
            ids,
            family,
            actions=actions,
            time=time,
            action_positions=action_positions,
            proprio=proprio,
            proprio_positions=proprio_positions,
        )
        hidden, new_cache = self.transformer(
            inputs_embeds=x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            block_ids=block_ids,
            mask=mask,
            cache=cache,
        )
        if head_positions is None:
            wanted: dict[str, Positions | None] = {name: None for name in self.config.active_heads}
        else:
            wanted = dict(head_positions)
        logits = {}
        for name, pos in wanted.items():
            logits[name] = self.head(name, hidden if pos is None else hidden[:, _positions(pos)])
        velocity = None
        if actions is not None:  # the flow head, read at the slots the noisy actions were fed to
            velocity = self.head("flow", hidden[:, _positions(action_positions)])
        return VideoLlamaOutput(logits=logits, velocity=velocity, hidden=hidden, cache=new_cache)


def head_kernel(config: VideoLlamaConfig, params: Mapping[str, Any], name: str) -> jax.Array:
    """The ``[D, V_head]`` weights of discrete head ``name`` from ``params`` (the ``"params"`` collection's content;
    a tied text head returns ``wte/embedding`` transposed): what ``VideoLlama.head`` multiplies by, for
    ``chunked_ce.token_nll``."""
    if name not in config.active_heads:
        raise ValueError(f"head {name!r} is not active; active heads: {config.active_heads}")
    return heads.get(name).kernel(config, params)


def _dummy_inputs(config: VideoLlamaConfig, batch: int, length: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ids = jnp.zeros((batch, length), jnp.int32)
    kw: dict[str, Any] = {}
    if config.action_dim:
        kw.update(
            actions=jnp.zeros((batch, 1, config.action_dim), jnp.float32),
            time=jnp.zeros((batch,), jnp.float32),
            action_positions=(0,),
        )
    if config.proprio_dim:
        kw.update(proprio=jnp.zeros((batch, 1, config.proprio_dim), jnp.float32), proprio_positions=(0,))
    return (ids, jnp.zeros_like(ids)), kw


def init_params(config: VideoLlamaConfig, rng: jax.Array, batch: int = 1, length: int = 4, boxed: bool = False) -> Any:
    """Random ``{"params": ...}`` with every active table, head and encoder (plain arrays unless ``boxed``)."""
    args, kw = _dummy_inputs(config, batch, length)
    variables = VideoLlama(config).init(rng, *args, method=VideoLlama.init_all_heads, **kw)
    return variables if boxed else nn.meta.unbox(variables)


def abstract_params(config: VideoLlamaConfig, batch: int = 1, length: int = 4) -> Any:
    """``jax.eval_shape`` of the boxed variables: shapes, dtypes and logical names without allocating."""
    return jax.eval_shape(lambda r: init_params(config, r, batch, length, boxed=True), jax.random.key(0))


def count_params(params: Any) -> int:
    """Number of scalars in a (boxed or plain, concrete or abstract) tree."""
    leaves = jax.tree.leaves(nn.meta.unbox(params))
    return int(sum(math.prod(np.shape(x)) for x in leaves))


_RENAMES = {"dte": "late", "delta_head": "latent_actions_head"}


def from_lineage(params: dict[str, Any]) -> dict[str, Any]:
    """Renames a converted LAPA / ViPRA tree (``read_lwm_params`` output, optionally under ``"params"``) to ours:
    ``dte`` -> ``late``, ``delta_head`` -> ``latent_actions_head``, a biased ``action_head`` (ViPRA velocity)
    -> ``velocity_head``. Everything else is kept as is (same array objects)."""
    if "params" in params and "transformer" not in params:
        return {**params, "params": from_lineage(params["params"])}
    out: dict[str, Any] = {}
    for key, value in params.items():
        new = _RENAMES.get(key, key)
        if key == "action_head" and isinstance(value, Mapping) and "bias" in value:
            new = "velocity_head"
        if new in out or (new != key and new in params):
            raise ValueError(f"from_lineage: {key!r} -> {new!r} collides with an existing {new!r}")
        out[new] = value
    return out
