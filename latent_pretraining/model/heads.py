"""Token families and the output heads of VideoLLaMA as one table of objects (octo's ``ActionHead``, openpi's
``compute_loss`` / ``sample_actions``): every head knows its family, its output size in ``VideoLlamaConfig``, its
parameter names, its loss weight key, its loss and how to predict.

    HEADS                 name -> Head, in the order losses are summed and metrics written
    text                  TEXT        llama.vocab_size      lm_head (or the tied wte)        cross-entropy
    vision                VISION      vision_vocab_size     vte + vision_head                cross-entropy
    latent                LATENT      latent_vocab_size     late + latent_actions_head       cross-entropy (acc: codes)
    action_bins           ACTION_BIN  action_vocab_size     ate + action_head                cross-entropy
    flow                  ACTION      action_dim            action_encoder + velocity_head   flow matching, Euler

A discrete head (``TokenHead``) is evaluated at the positions whose NEXT token is of its family (targets shifted by
one) and scored by the one chunked cross-entropy (``chunked_ce.token_nll``: ``llama.loss_chunk`` positions at a time,
or the full logits when the model already computed them); it predicts by argmax or a seeded categorical draw. The
flow head (``FlowHead``) reads the velocity at the action slots (unshifted), owns the flow-matching loss and
integrates it from noise (``flow.integrate``). A head is present when its size in the config is > 0 (text: always).

Adding a head = one subclass (or instance) of ``Head`` + ``register(head)`` + its size field in the config (and its
weight under ``config.loss``). Nothing else iterates families by hand: ``VideoLlama`` creates modules from the table,
``LayoutSpec.head_positions`` and ``objective.losses`` loop over it, and the samplers ask the head to pick / integrate.
This module imports no layout code: heads see the layout (``LayoutSpec``) and the assembled rows (``Sequence``) only
through the ``LossInputs`` the objective passes in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from core.errors import unknown
from latent_pretraining import flow
from latent_pretraining.model import chunked_ce
from latent_pretraining.model.llama_config import LlamaConfig
from latent_pretraining.model.llama_layers import Embed, Linear

__all__ = [
    "ACTION", "ACTION_BIN", "FAMILY_NAMES", "HEADS", "LATENT", "PROPRIO", "TEXT", "TOKEN_FAMILIES", "VISION",
    "FlowHead", "Head", "LatentHead", "LossInputs", "TextHead", "TokenHead", "action_head", "active", "get",
    "logits_nll", "register", "shifted_targets", "slot_weights", "token_heads", "token_loss",
]  # fmt: skip

# token families: the per-position ``family`` array of a sequence holds these ids
TEXT, VISION, LATENT, ACTION_BIN, ACTION, PROPRIO = 0, 1, 2, 3, 4, 5
FAMILY_NAMES = {TEXT: "text", VISION: "vision", LATENT: "latent", ACTION_BIN: "action_bin", ACTION: "action",
                PROPRIO: "proprio"}

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """What a head's loss may read (built by ``objective.losses``).

    spec: the ``LayoutSpec``; seq: the assembled ``Sequence`` (ids / family / loss_mask ``[B, L]``); out: the
    ``VideoLlamaOutput`` (``hidden [B, L, D]``, ``logits`` per requested head, ``velocity``); extra: per-step arrays
    the heads' ``training_inputs`` added (e.g. ``v_target``); config / params: for heads evaluated from ``hidden``
    (None when the caller passed no params: then every discrete head must be in ``out.logits``)."""

    spec: Any
    seq: Any
    out: Any
    extra: Mapping[str, jax.Array]
    config: Any
    params: PyTree | None


class Head:
    """One output head. Subclasses set the class attributes and implement ``loss`` (and ``training_inputs`` when
    the model needs per-step inputs for it, as flow matching needs noisy actions and a time)."""

    name: str = ""  # metric suffix (loss_<name>), loss weight key, key in head_positions / out.logits
    family: int = TEXT  # the token family it predicts
    size_field: str = ""  # VideoLlamaConfig attribute holding the output size (0 = head absent)
    module: str = ""  # parameter (module) name of its output layer; fixed by existing checkpoints
    table: str | None = None  # parameter name of its family's input embedding table (None: no table of its own)
    discrete: bool = False  # predicts token ids (scored by cross-entropy, decoded token by token)

    @property
    def weight_key(self) -> str:
        """Key of its weight in ``loss_weights`` (``config.loss``)."""
        return self.name

    def size(self, config: Any) -> int:
        return int(getattr(config, self.size_field, 0))

    def is_active(self, config: Any) -> bool:
        return self.size(config) > 0

    def build(self, config: Any) -> nn.Module:
        """The output layer (created under ``self.module`` in ``VideoLlama.setup``): a biased projection D -> size
        (a continuous head's default)."""
        return Linear(self.size(config), ("embed", None), config.llama, out_dtype=jnp.float32, use_bias=True)

    def build_table(self, config: Any) -> nn.Module | None:
        """The family's input embedding ``[size, D]`` (None: positions of the family are embedded otherwise)."""
        return Embed(self.size(config), config.llama) if self.table else None

    def apply(self, model: nn.Module, hidden: jax.Array) -> jax.Array:
        """``hidden [B, n, D]`` -> f32 ``[B, n, size]`` through this head's module of the bound ``model``."""
        return getattr(model, self.module)(hidden)

    def positions(self, spec: Any) -> np.ndarray:
        """int32[n] static positions where this head is evaluated in ``spec`` (empty: not in this layout)."""
        return spec.head_positions().get(self.name, np.zeros((0,), np.int32))

    def wants_logits(self, config: Any) -> bool:
        """Whether the objective asks the model for this head's output at ``positions`` (``head_positions``)."""
        return True

    def applies(self, inputs: LossInputs) -> bool:
        """Whether this head has anything to score in this layout / model output."""
        return self.positions(inputs.spec).size > 0

    def training_inputs(self, rng: jax.Array, batch: Mapping[str, jax.Array], spec: Any, flow_cfg: flow.FlowConfig
                        ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """(extra keyword arguments of the model call, arrays for ``LossInputs.extra``) for one training step."""
        return {}, {}

    def loss(self, inputs: LossInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss f32[], metrics {loss_<name>, ...}) of this head on one batch."""
        raise NotImplementedError

    def eval_metrics(self, inputs: LossInputs) -> dict[str, jax.Array]:
        """Extra evaluation-only metrics (none by default)."""
        return {}


def shifted_targets(seq: Any, positions: np.ndarray, family: int) -> tuple[jax.Array, jax.Array]:
    """(ids int32[B, n], weights bool[B, n]) of the tokens AFTER ``positions`` (position i predicts token i+1) that
    belong to ``family`` and carry a loss in ``seq`` (a ``sequence.Sequence``)."""
    nxt = np.asarray(positions) + 1
    return seq.ids[:, nxt], seq.loss_mask[:, nxt] & (seq.family[:, nxt] == family)


def slot_weights(seq: Any, positions: np.ndarray, family: int) -> jax.Array:
    """bool[B, n]: the slots AT ``positions`` (no shift) of ``family`` that carry a loss (e.g. real action slots)."""
    pos = np.asarray(positions)
    return seq.loss_mask[:, pos] & (seq.family[:, pos] == family)


def logits_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL f32[B, n] and argmax hits bool[B, n] from full logits f32[B, n, V] (log_softmax + gather)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return nll, jnp.argmax(logits, axis=-1) == targets


def token_loss(nll: jax.Array, hit: jax.Array, weights: jax.Array, acc_weights: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss, accuracy, number of scored targets) from nll f32[B, n], hits bool[B, n], weights bool[B, n].

    loss: per-row mean over valid targets, then mean over rows with any (``chunked_ce.masked_mean_loss``);
    accuracy: token mean of hits over ``acc_weights`` (default ``weights``)."""
    loss = chunked_ce.masked_mean_loss(nll, weights)
    aw = (weights if acc_weights is None else acc_weights).astype(jnp.float32)
    acc = jnp.sum(hit.astype(jnp.float32) * aw) / jnp.maximum(jnp.sum(aw), 1.0)
    return loss, acc, jnp.sum(aw)


class TokenHead(Head):
    """A discrete head: logits over its family's table, next-token cross-entropy, argmax / categorical sampling."""

    discrete = True

    def __init__(self, name: str, family: int, size_field: str, module: str, table: str | None) -> None:
        self.name, self.family, self.size_field, self.module, self.table = name, family, size_field, module, table

    def build(self, config: Any) -> nn.Module:
        return Linear(self.size(config), ("embed", "vocab"), config.llama, out_dtype=jnp.float32)

    def wants_logits(self, config: Any) -> bool:
        return config.llama.loss_chunk <= 0  # else evaluated in `token_nll` from hidden, chunked and rematerialized

    def kernel(self, config: Any, params: Mapping[str, Any]) -> jax.Array:
        """``[D, size]`` weights the head multiplies by (for ``chunked_ce.token_nll``)."""
        return params[self.module]["kernel"]

    def targets(self, seq: Any, positions: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """(ids int32[B, n], weights bool[B, n]) of the tokens after ``positions`` that belong to this family."""
        return shifted_targets(seq, positions, self.family)

    def accuracy_weights(self, spec: Any, targets: jax.Array, weights: jax.Array) -> jax.Array | None:
        """Which targets count for ``acc_<name>`` (None: the loss weights)."""
        return None

    def token_nll(self, inputs: LossInputs, positions: np.ndarray, targets: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
        """Per-token NLL f32[B, n] and hits bool[B, n]: from ``out.logits`` when the model computed them, else from
        ``out.hidden`` and the kernel in chunks of ``llama.loss_chunk`` (rematerialized)."""
        if self.name in inputs.out.logits:
            return logits_nll(inputs.out.logits[self.name], targets)
        if inputs.params is None:
            raise ValueError(f"head {self.name!r} has no logits; pass model and params to evaluate it chunked")
        lc = inputs.config.llama
        hidden = inputs.out.hidden[:, jnp.asarray(positions, jnp.int32)]
        return chunked_ce.token_nll(hidden, self.kernel(inputs.config, inputs.params), targets,
                                    chunk=lc.loss_chunk, compute_dtype=lc.compute_dtype)

    def loss(self, inputs: LossInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
        pos = self.positions(inputs.spec)
        tgt, w = self.targets(inputs.seq, pos)
        nll, hit = self.token_nll(inputs, pos, tgt)
        loss, acc, n = token_loss(nll, hit, w, self.accuracy_weights(inputs.spec, tgt, w))
        return loss, {f"loss_{self.name}": loss, f"acc_{self.name}": acc, f"n_{self.name}": n}

    @staticmethod
    def pick(logits: jax.Array, rng: jax.Array | None = None, temperature: float = 1.0,
             step: int | jax.Array = 0) -> jax.Array:
        """int32 ids from logits f32[..., V]: argmax (rng None or temperature <= 0) or a categorical draw at
        ``temperature`` with key fold_in(rng, step)."""
        if rng is None or temperature <= 0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        key = jax.random.fold_in(rng, step)
        return jax.random.categorical(key, logits.astype(jnp.float32) / temperature, axis=-1).astype(jnp.int32)


class TextHead(TokenHead):
    """The text head: always present (``llama.vocab_size``); with ``llama.tie_embeddings`` it is ``wte.attend``."""

    def __init__(self) -> None:
        super().__init__("text", TEXT, "vocab_size", "lm_head", None)

    def size(self, config: Any) -> int:
        return int(config.llama.vocab_size)

    def is_active(self, config: Any) -> bool:
        return True

    def build(self, config: Any) -> nn.Module | None:
        lc: LlamaConfig = config.llama
        return None if lc.tie_embeddings else Linear(lc.vocab_size, ("embed", "vocab"), lc, out_dtype=jnp.float32)

    def apply(self, model: nn.Module, hidden: jax.Array) -> jax.Array:
        if model.config.llama.tie_embeddings:
            return model.transformer.attend(hidden)
        return model.lm_head(hidden)

    def kernel(self, config: Any, params: Mapping[str, Any]) -> jax.Array:
        if config.llama.tie_embeddings:
            return params["transformer"]["wte"]["embedding"].T
        return params[self.module]["kernel"]


class LatentHead(TokenHead):
    """Latent actions: accuracy counts codes, not the separator; evaluation also counts the scored codes."""

    def __init__(self) -> None:
        super().__init__("latent", LATENT, "latent_vocab_size", "latent_actions_head", "late")

    def accuracy_weights(self, spec: Any, targets: jax.Array, weights: jax.Array) -> jax.Array:
        return weights & (targets < spec.latent_codebook)

    def eval_metrics(self, inputs: LossInputs) -> dict[str, jax.Array]:
        """``latent_counts`` i32[codebook]: how often each code is a scored target (codebook use of the labels)."""
        spec = inputs.spec
        tgt, w = self.targets(inputs.seq, self.positions(spec))
        w = w & (tgt < spec.latent_codebook)
        counts = jnp.zeros(spec.latent_codebook, jnp.int32).at[jnp.clip(tgt, 0, spec.latent_codebook - 1)]
        return {"latent_counts": counts.add(w.astype(jnp.int32))}


class FlowHead(Head):
    """ViPRA flow matching: the velocity at the continuous action slots (same position, no shift), the MSE to
    v* = a − (1−σ)·ε averaged over all valid slots of the batch, and Euler / Heun integration from noise."""

    name, family, size_field, module = "flow", ACTION, "action_dim", "velocity_head"

    def positions(self, spec: Any) -> np.ndarray:
        return np.asarray(spec.action_positions, np.int32)

    def wants_logits(self, config: Any) -> bool:
        return False  # the model evaluates it at `action_positions` whenever actions are fed (out.velocity)

    def applies(self, inputs: LossInputs) -> bool:
        return self.positions(inputs.spec).size > 0 and inputs.out.velocity is not None

    def training_inputs(self, rng: jax.Array, batch: Mapping[str, jax.Array], spec: Any, flow_cfg: flow.FlowConfig
                        ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        x_t, t, v_target = flow.training_example(rng, batch["actions"].astype(jnp.float32), flow_cfg)
        return {"actions": x_t, "time": t, "action_positions": spec.action_positions}, {"v_target": v_target}

    def loss(self, inputs: LossInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
        pos = self.positions(inputs.spec)
        valid = slot_weights(inputs.seq, pos, self.family)
        loss, n = flow.flow_loss(inputs.out.velocity, inputs.extra["v_target"], valid)
        return loss, {"loss_flow": loss, "n_flow": n}

    @staticmethod
    def sample(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array, cfg: flow.FlowConfig,
               steps: int | None = None, integrator: str | None = None) -> jax.Array:
        """Actions f32[B, H, A] integrated from ``noise`` at t=0 (``flow.integrate``)."""
        return flow.integrate(velocity_fn, noise.astype(jnp.float32), cfg, steps, integrator)


HEADS: dict[str, Head] = {}


def register(head: Head) -> Head:
    """Adds ``head`` to the table (after the existing ones: losses are summed in table order)."""
    if not head.name or head.name in HEADS:
        raise ValueError(f"head name {head.name!r} is empty or already in the table ({', '.join(HEADS)})")
    if any(h.module == head.module for h in HEADS.values()):
        raise ValueError(f"head {head.name!r}: module name {head.module!r} is already used")
    HEADS[head.name] = head
    return head


for _head in (TextHead(), TokenHead("vision", VISION, "vision_vocab_size", "vision_head", "vte"), LatentHead(),
              TokenHead("action_bins", ACTION_BIN, "action_vocab_size", "action_head", "ate"), FlowHead()):
    register(_head)


def get(name: str) -> Head:
    """The head called ``name`` (an unknown name fails with the known ones)."""
    if name not in HEADS:
        raise ValueError(unknown("head", name, HEADS))
    return HEADS[name]


def active(config: Any) -> Iterator[Head]:
    """The heads present in ``config`` (a ``VideoLlamaConfig``), in table order."""
    return (h for h in HEADS.values() if h.is_active(config))


def token_heads() -> Iterator[TokenHead]:
    """Every discrete head of the table, in order."""
    return (h for h in HEADS.values() if isinstance(h, TokenHead))


class _TokenFamilies(Mapping):
    """Live view discrete head name -> family id of the table (``sequence.HEAD_FAMILIES``)."""

    def __getitem__(self, name: str) -> int:
        head = HEADS.get(name)
        if not isinstance(head, TokenHead):
            raise KeyError(name)
        return head.family

    def __iter__(self) -> Iterator[str]:
        return (h.name for h in token_heads())

    def __len__(self) -> int:
        return sum(1 for _ in token_heads())


TOKEN_FAMILIES: Mapping[str, int] = _TokenFamilies()


def action_head(spec: Any, config: Any) -> Head | None:
    """The active head whose family fills the action suffix of ``spec`` (flow slots or action-bin tokens), or None
    for a layout without one. The policy asks this instead of branching on the recipe."""
    if not spec.has_action_rows:
        return None
    fam, loss, _ = spec.template(True)
    scored = set(np.unique(fam[loss]).tolist()) - {TEXT}
    found = [h for h in active(config) if h.family in scored]
    return found[0] if found else None
