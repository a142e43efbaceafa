"""Token layouts of the VideoLLaMA recipes (LAPA latent pretraining, ViPRA dynamics pretraining, co-training).

Every row of a batch has the same length L and the same prefix; the suffix is one of two kinds, chosen per row:

    prefix (all rows)
      prompt   P text ids, LEFT-padded: BOS + "<template with the instruction> <vision>"        no loss
      frames   W × (g² vision ids + terminator)   terminator: eof, except eov on the last frame of the vision span
      [proprio slot]  `proprio_slots` (0 or 1) PROPRIO positions: the proprio encoder's output replaces their
               embedding (Sequence.proprio, fed by the caller)                                   no loss
    video suffix ("dynamics" rows: action-free video, or robot rows not drawn for flow matching)
      [future frame: g² ids + eov]                   ViPRA "latent state" (vision loss)   — `future_frame`
      open marker  e.g. "</vision> <dynamics>"        text loss
      S × (C latent ids [+ separator])               latent-action loss (masked where the LAM clip ran off the end)
      close marker e.g. "</dynamics>", EOS           text loss
    action suffix (rows with a real action chunk)
      "</vision> <action>"                           text loss
      H action slots                                 flow matching at the SAME position (no shift), or
      N discrete action tokens                       LAPA fine-tuning: per-dimension bins (action-bin CE, shifted)
      "</action>", EOS                               text loss
    right padding up to L (attention_mask 0, no loss)

Discrete targets are shifted: position i predicts token i+1, so each head is evaluated at the static positions
`spec.head_positions()[head]` (i such that token i+1 may be one of its targets) and weighted per row by
`loss_mask[:, i+1] & (family[:, i+1] == head family)`. Action slots are unshifted.

Layouts of the lineage (reference/lapa.md §3.3, vipra.md §2): LAPA = P + 1 frame (eov) + "</vision> <delta>" +
4 codes + "</delta>" + EOS; ViPRA pretraining = P + frames (t-2, t) (eof) + future frame (eov) + "</vision>
<dynamics>" + H × (16 codes + eola) + "</dynamics>" + EOS; ViPRA `fields_ca` = P + frames (t-2: eof, t: eov) +
"</vision> <action>" + H slots + "</action>" + EOS. Deliberate difference: markers are tokenized once (not per
example), and the lineage's literal "<s> " text before the template is replaced by the real BOS id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from latent_pretraining.model import heads
from latent_pretraining.model.heads import ACTION, ACTION_BIN, LATENT, PROPRIO, TEXT, VISION

# discrete head name -> the family it predicts: a live view of the head table (latent_pretraining/model/heads.py)
HEAD_FAMILIES = heads.TOKEN_FAMILIES


@dataclasses.dataclass(frozen=True)
class LayoutSpec:
    """Static description of a recipe's sequence (see the module docstring). Marker fields hold text-token ids."""

    prompt_len: int
    num_frames: int
    tokens_per_frame: int
    vision_codebook: int  # VQGAN codebook size: eof = this, eov = this + 1
    future_frame: bool
    latent_steps: int  # S transitions (0: no dynamics rows)
    codes_per_step: int  # C codes per transition
    latent_codebook: int  # LAM codebook size: the separator id equals it
    latent_separator: bool
    action_slots: int  # H continuous slots (flow matching)
    bos_id: int
    eos_id: int
    pad_id: int
    video_open: tuple[int, ...] = ()
    video_close: tuple[int, ...] = ()
    action_open: tuple[int, ...] = ()
    action_close: tuple[int, ...] = ()
    bidirectional_actions: bool = False
    action_tokens: int = 0  # discrete action-bin tokens in the action suffix (LAPA fine-tuning: 7 per step)
    proprio_slots: int = 0  # PROPRIO slots after the frames (effector state as input; 0 = none, old checkpoints)

    def __post_init__(self) -> None:
        if self.action_slots and self.action_tokens:
            raise ValueError("LayoutSpec: the action suffix holds continuous slots or discrete tokens, not both")
        if self.prompt_len < 2 or self.num_frames < 1 or self.tokens_per_frame < 1:
            raise ValueError(f"LayoutSpec: prompt_len {self.prompt_len} (>= 2), num_frames {self.num_frames} (>= 1) "
                             f"and tokens_per_frame {self.tokens_per_frame} (>= 1) are required")
        if self.proprio_slots not in (0, 1):
            raise ValueError(f"LayoutSpec: proprio_slots {self.proprio_slots} must be 0 or 1 (one state per row)")
        if not self.has_video_rows and not self.has_action_rows:
            raise ValueError("LayoutSpec has neither a video suffix (latent_steps / future_frame) nor action slots")

    # ------------------------------------------------------------------------------------------------ geometry
    @property
    def eof(self) -> int:
        return self.vision_codebook

    @property
    def eov(self) -> int:
        return self.vision_codebook + 1

    @property
    def separator(self) -> int:
        return self.latent_codebook

    @property
    def has_video_rows(self) -> bool:
        return self.latent_steps > 0 or self.future_frame

    @property
    def has_action_rows(self) -> bool:
        return self.action_slots > 0 or self.action_tokens > 0

    @property
    def step_len(self) -> int:
        return self.codes_per_step + int(self.latent_separator)

    @property
    def prefix_len(self) -> int:
        return self.prompt_len + self.num_frames * (self.tokens_per_frame + 1) + self.proprio_slots

    @property
    def proprio_positions(self) -> np.ndarray:
        """int32[proprio_slots]: absolute positions of the proprio slots (right after the frames, every row)."""
        start = self.prompt_len + self.num_frames * (self.tokens_per_frame + 1)
        return np.arange(start, start + self.proprio_slots, dtype=np.int32)

    @property
    def video_suffix_len(self) -> int:
        if not self.has_video_rows:
            return 0
        future = self.tokens_per_frame + 1 if self.future_frame else 0
        return future + len(self.video_open) + self.latent_steps * self.step_len + len(self.video_close) + 1

    @property
    def action_suffix_len(self) -> int:
        if not self.has_action_rows:
            return 0
        return len(self.action_open) + self.action_slots + self.action_tokens + len(self.action_close) + 1

    @property
    def length(self) -> int:
        return self.prefix_len + max(self.video_suffix_len, self.action_suffix_len)

    @property
    def action_positions(self) -> np.ndarray:
        """int32[H]: absolute positions of the action slots (in action rows)."""
        start = self.prefix_len + len(self.action_open)
        return np.arange(start, start + self.action_slots, dtype=np.int32)

    @property
    def latent_start(self) -> int:
        future = self.tokens_per_frame + 1 if self.future_frame else 0
        return self.prefix_len + future + len(self.video_open)

    # ------------------------------------------------------------------------------------------------ templates
    def template(self, action_row: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Static (family int32[L], loss bool[L], real bool[L]) of one row kind; `real` is False on padding."""
        fam, loss = [TEXT] * self.prompt_len, [False] * self.prompt_len
        fam += [VISION] * (self.num_frames * (self.tokens_per_frame + 1))
        loss += [False] * (self.num_frames * (self.tokens_per_frame + 1))
        fam += [PROPRIO] * self.proprio_slots
        loss += [False] * self.proprio_slots
        if action_row:
            n_open, n_close = len(self.action_open), len(self.action_close)
            fam += [TEXT] * n_open + [ACTION] * self.action_slots + [ACTION_BIN] * self.action_tokens
            fam += [TEXT] * (n_close + 1)
            loss += [True] * (n_open + self.action_slots + self.action_tokens + n_close + 1)
        else:
            if self.future_frame:
                fam += [VISION] * (self.tokens_per_frame + 1)
                loss += [True] * (self.tokens_per_frame + 1)
            n = len(self.video_open) + self.latent_steps * self.step_len + len(self.video_close) + 1
            fam += [TEXT] * len(self.video_open) + [LATENT] * (self.latent_steps * self.step_len)
            fam += [TEXT] * (len(self.video_close) + 1)
            loss += [True] * n
        real = [True] * len(fam) + [False] * (self.length - len(fam))
        fam += [TEXT] * (self.length - len(fam))
        loss += [False] * (self.length - len(loss))
        return np.asarray(fam, np.int32), np.asarray(loss, bool), np.asarray(real, bool)

    def row_kinds(self) -> list[bool]:
        return [k for k, on in ((False, self.has_video_rows), (True, self.has_action_rows)) if on]

    def head_positions(self) -> dict[str, np.ndarray]:
        """discrete head name -> int32[n] positions i whose next token i+1 may be a target of that head (static),
        for every discrete head of the table whose family is scored in this layout."""
        out = {}
        for name, family in HEAD_FAMILIES.items():
            hit = np.zeros(self.length, bool)
            for kind in self.row_kinds():
                fam, loss, _ = self.template(kind)
                hit |= (fam == family) & loss
            pos = np.nonzero(hit[1:])[0].astype(np.int32)
            if pos.size:
                out[name] = pos
        return out


@struct.dataclass
class Sequence:
    """One batch of assembled rows.

    ids            int32[B, L]  ids local to each family's table (action slots: 0)
    family         int32[B, L]  token family per position (video_llama.TEXT, VISION, LATENT, ACTION, ...)
    loss_mask      bool[B, L]   this token is a target (discrete: predicted from position i-1; action: in place)
    attention_mask int32[B, L]  0 on padding (prompt left padding, suffix right padding)
    block_ids      int32[B, L]  1 on the action slots of action rows when the chunk is bidirectional, else 0
    action_row     bool[B]      the row carries the action suffix
    proprio        f32[B, S, P] the proprio encoder's input at the proprio slots (None: the layout has none)
    proprio_positions           static: the slots' positions (spec.proprio_positions)
    """

    ids: jax.Array
    family: jax.Array
    loss_mask: jax.Array
    attention_mask: jax.Array
    block_ids: jax.Array
    action_row: jax.Array
    proprio: jax.Array | None = None
    proprio_positions: tuple[int, ...] = struct.field(pytree_node=False, default=())

    def model_inputs(self, length: int | None = None) -> dict[str, Any]:
        """Keyword arguments of ``VideoLlama.__call__`` for the proprio slots among the first ``length`` positions
        (default all): ``{}`` when there are none, so callers can always splat it."""
        pos = tuple(p for p in self.proprio_positions if length is None or p < length)
        if self.proprio is None or not pos:
            return {}
        return {"proprio": self.proprio[:, :len(pos)], "proprio_positions": pos}


def _const(x: list[int] | tuple[int, ...], b: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(x, jnp.int32), (b, len(x)))


def _pad_to(x: jax.Array, length: int, value: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=value)


def assemble(
    spec: LayoutSpec,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    frame_ids: jax.Array,
    *,
    future_ids: jax.Array | None = None,
    latent_ids: jax.Array | None = None,
    latent_valid: jax.Array | None = None,
    action_row: jax.Array | None = None,
    action_mask: jax.Array | None = None,
    action_token_ids: jax.Array | None = None,
    action_token_valid: jax.Array | None = None,
    proprio: jax.Array | None = None,
) -> Sequence:
    """Builds the rows on device from fixed-length pieces.

    Args:
      prompt_ids int32[B, P], prompt_mask bool[B, P]: left-padded prompt (BOS included, "<vision>" at the end).
      frame_ids int32[B, W, g²]: VQGAN ids of the history frames.
      future_ids int32[B, g²]: the future frame (required when `spec.future_frame`).
      latent_ids int32[B, S, C], latent_valid bool[B, S]: LAM codes per transition (required with latent_steps).
      action_row bool[B]: rows that take the action suffix (default: none, or all when there is no video suffix).
      action_mask bool[B, H]: real actions per slot (default all True).
      action_token_ids int32[B, N], action_token_valid bool[B, N]: discrete action tokens (layouts with
        action_tokens; ids local to the action-bin table).
      proprio f32[B, P]: normalized proprio (required when spec.proprio_slots; P = the model's proprio_dim).
    """
    b = prompt_ids.shape[0]
    g, w = spec.tokens_per_frame, spec.num_frames
    if prompt_ids.shape[1] != spec.prompt_len or frame_ids.shape[1:] != (w, g):
        raise ValueError(f"prompt ids {prompt_ids.shape} / frame ids {frame_ids.shape} do not match the layout "
                         f"(prompt_len {spec.prompt_len}, {w} frames of {g} tokens)")
    if action_row is None or not spec.has_video_rows:
        action_row = jnp.full((b,), not spec.has_video_rows)
    if not spec.has_action_rows:
        action_row = jnp.zeros((b,), bool)
    action_row = action_row.astype(bool)

    # prefix: the last frame's terminator is eov unless a future frame follows (video rows of a future-frame layout)
    term = jnp.full((b, w), spec.eof, jnp.int32)
    last = jnp.where(action_row | (not spec.future_frame), spec.eov, spec.eof)
    term = term.at[:, -1].set(last)
    frames = jnp.concatenate([frame_ids.astype(jnp.int32), term[..., None]], -1).reshape(b, -1)
    if spec.proprio_slots and (proprio is None or proprio.ndim != 2 or proprio.shape[0] != b):
        got = None if proprio is None else proprio.shape
        raise ValueError(f"this layout has a proprio slot: pass proprio f32[B={b}, P] (normalized), got {got}")
    prefix = jnp.concatenate([prompt_ids.astype(jnp.int32), frames, jnp.zeros((b, spec.proprio_slots), jnp.int32)],
                             1)
    suffix_len = spec.length - spec.prefix_len

    # dynamic validity (on top of the static templates)
    valid_vid = jnp.ones((b, suffix_len), bool)
    valid_act = jnp.ones((b, suffix_len), bool)
    pieces_vid, pieces_act = [], []
    if spec.has_video_rows:
        if spec.future_frame:
            if future_ids is None:
                raise ValueError("this layout has a future frame: pass future_ids int32[B, g²]")
            pieces_vid += [future_ids.astype(jnp.int32), _const([spec.eov], b)]
        pieces_vid.append(_const(spec.video_open, b))
        if spec.latent_steps:
            if latent_ids is None or latent_ids.shape[1:] != (spec.latent_steps, spec.codes_per_step):
                got = None if latent_ids is None else latent_ids.shape
                raise ValueError(f"latent_ids must be int32[B, {spec.latent_steps}, {spec.codes_per_step}], got {got}")
            lat = latent_ids.astype(jnp.int32)
            if spec.latent_separator:
                lat = jnp.concatenate([lat, jnp.full((b, spec.latent_steps, 1), spec.separator, jnp.int32)], -1)
            pieces_vid.append(lat.reshape(b, -1))
            if latent_valid is not None:
                tok_valid = jnp.repeat(latent_valid.astype(bool), spec.step_len, axis=1)
                start = spec.latent_start - spec.prefix_len
                valid_vid = jax.lax.dynamic_update_slice(valid_vid, tok_valid, (0, start))
        pieces_vid += [_const(spec.video_close, b), _const([spec.eos_id], b)]
    if spec.has_action_rows:
        if spec.action_tokens:
            if action_token_ids is None or action_token_ids.shape[1:] != (spec.action_tokens,):
                got = None if action_token_ids is None else action_token_ids.shape
                raise ValueError(f"action_token_ids must be int32[B, {spec.action_tokens}], got {got}")
            body = action_token_ids.astype(jnp.int32)
            body_valid = action_token_valid
        else:
            body, body_valid = jnp.zeros((b, spec.action_slots), jnp.int32), action_mask
        pieces_act = [_const(spec.action_open, b), body, _const(spec.action_close, b), _const([spec.eos_id], b)]
        if body_valid is not None:
            valid_act = jax.lax.dynamic_update_slice(valid_act, body_valid.astype(bool), (0, len(spec.action_open)))
    vid = _pad_to(jnp.concatenate(pieces_vid, 1), suffix_len, spec.pad_id) if pieces_vid else None
    act = _pad_to(jnp.concatenate(pieces_act, 1), suffix_len, spec.pad_id) if pieces_act else None
    if vid is None:
        suffix, valid = act, valid_act
    elif act is None:
        suffix, valid = vid, valid_vid
    else:
        suffix = jnp.where(action_row[:, None], act, vid)
        valid = jnp.where(action_row[:, None], valid_act, valid_vid)
    ids = jnp.concatenate([prefix, suffix], 1)

    kinds = {k: spec.template(k) for k in spec.row_kinds()}
    pick = lambda i: (jnp.where(action_row[:, None], jnp.asarray(kinds[True][i]), jnp.asarray(kinds[False][i]))
                      if len(kinds) == 2 else jnp.broadcast_to(jnp.asarray(next(iter(kinds.values()))[i]),
                                                               (b, spec.length)))
    family, loss, real = pick(0), pick(1), pick(2)
    loss = loss & jnp.concatenate([jnp.ones((b, spec.prefix_len), bool), valid], 1)
    attn = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, spec.length - spec.prompt_len), bool)], 1) & real
    block = jnp.zeros((b, spec.length), jnp.int32)
    if spec.bidirectional_actions and spec.has_action_rows:
        slots = jnp.zeros((spec.length,), jnp.int32).at[spec.action_positions].set(1)
        block = jnp.where(action_row[:, None], slots[None], 0)
    slots = tuple(int(p) for p in spec.proprio_positions)
    return Sequence(ids=ids, family=family, loss_mask=loss, attention_mask=attn.astype(jnp.int32), block_ids=block,
                    action_row=action_row, proprio=proprio[:, None, :].astype(jnp.float32) if slots else None,
                    proprio_positions=slots)


def head_targets(seq: Sequence, positions: np.ndarray, family: int) -> tuple[jax.Array, jax.Array]:
    """(target ids int32[B, n], weights bool[B, n]) of the head evaluated at `positions` (shifted by one)."""
    return heads.shifted_targets(seq, positions, family)


def action_weights(seq: Sequence, spec: LayoutSpec) -> jax.Array:
    """bool[B, H]: action slots that carry a flow-matching target (action rows, real actions)."""
    return heads.slot_weights(seq, spec.action_positions, ACTION)


def describe(spec: LayoutSpec, action_row: bool = False) -> list[str]:
    """Human-readable segments of one row kind, e.g. ['prompt[64]', 'frame0[64]+eof', ...] (docs and tests)."""
    g = spec.tokens_per_frame
    out = [f"prompt[{spec.prompt_len}]"]
    for i in range(spec.num_frames):
        last = i == spec.num_frames - 1 and (action_row or not spec.future_frame)
        out.append(f"frame{i}[{g}]+{'eov' if last else 'eof'}")
    out += ["proprio"] * spec.proprio_slots
    if action_row:
        body = f"action_tokens[{spec.action_tokens}]" if spec.action_tokens else f"action_slots[{spec.action_slots}]"
        out += [f"text{list(spec.action_open)}", body, f"text{list(spec.action_close)}", "eos"]
    else:
        if spec.future_frame:
            out.append(f"future[{g}]+eov")
        out.append(f"text{list(spec.video_open)}")
        sep = "+sep" if spec.latent_separator else ""
        out += [f"latent{s}[{spec.codes_per_step}]{sep}" for s in range(spec.latent_steps)]
        out += [f"text{list(spec.video_close)}", "eos"]
    return out
