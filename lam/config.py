"""The LAM configuration contract: the enum-like kinds and their allowed values, validation, and loading of the
config a training run saved with its checkpoints (config.json) — also from runs older than some fields.

The presets (full tree with every field) are in configs/lam.py; this module is what `lam` itself checks, so a typo
given on the command line (`--config.model.encoder.layout=factorised`) fails at model construction / train start
with the allowed values instead of silently selecting another variant.

    check(config)                       # the whole tree (configs/lam.py get_config, lam.train.train, load_lam)
    check_kinds(config.model, "model")  # one block (LatentActionModel.setup)
    config = from_saved(json_dict)      # legacy defaults filled, removed fields dropped, then checked
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import ml_collections

from core.errors import unknown
from core.lookup import UnknownName

# dotted field -> allowed values (the first one is not a default; defaults live in configs/lam.py)
KINDS: dict[str, tuple[str, ...]] = {
    "model.encoder.kind": ("patch", "dino"),  # patch embedding, or DINOv2-reg features (ViPRA)
    "model.encoder.layout": ("factorized", "interleaved"),  # LAPA: spatial then temporal layers; ViPRA: interleaved
    "model.decoder.kind": ("cross_attention", "film"),  # LAPA per-transition cross-attention; ViPRA causal FiLM
    "model.code_pool": ("grid", "mean", "max"),  # slot (i, j) = grid cell (i, j); slots = projections of the grid
    # mean; or of each channel's grid max and min
    "quantizer.source": ("codes", "batch"),  # where a dead code restarts: near a live code, or at a batch vector
    "loss.pixel": ("l1", "mse"),
    "loss.flow": ("l1", "mse"),
    # the demo world's exact flow, or estimated on the host from the frames (lam/flow_targets.py ESTIMATORS)
    "loss.flow_target": ("ground_truth", "farneback", "block_match"),
    "data.source": ("memory", "pipeline"),  # lam/data.py in-memory table, or the streaming data/loader.py
}

# fields that runs saved before they existed lack: the value that reproduces what those runs did
LEGACY_DEFAULTS: dict[str, Any] = {
    "model.code_pool": "grid", "model.slot_codebooks": False, "model.quant_norm": False,
    "model.quant_warmup_steps": 0, "model.encoder.motion_stem": 0, "model.encoder.peg": True,
    "model.decoder.patch_size": 0, "model.decoder.context": 0,
    "loss.flow": "l1", "loss.flow_moving_weight": 0.0, "loss.flow_target": "ground_truth",
    "loss.farneback_winsize": 9, "data.camera": "", "model.stabilize": False, "loss.flow_moving_power": 0.0,
    "loss.farneback_gate": 0.0, "model.action_head": 0, "model.action_from": "codes", "loss.action_weight": 0.0,
    "data.action_episodes": 0, "data.action_share": 0.0, "loss.agent_weight": 0.0, "loss.agent_radius": 4.0,
    "loss.block_match_radius": 6, "loss.block_match_window": 5, "loss.block_match_penalty": 10.0,
    "loss.block_match_gate": 8.0,  # read only with loss.flow_target='block_match', which older runs cannot have
    "loss.block_match_register": False, "loss.block_match_consistency": 0.0,  # block_match runs before stop 51
    "eval.mlp_probe_hidden": 256,  # evaluation only (no effect on the checkpoint): old runs get the MLP probe too
}
# model.decoder.peg was added with a kind-dependent default (cross_attention: off, film: on)
LEGACY_DECODER_PEG = {"cross_attention": False, "film": True}

# fields that saved configs may carry but nothing reads any more (dropped on load)
REMOVED: tuple[str, ...] = ("eval.position_bins", "model.dino.lr_mult", "loss.perceptual", "model.code_global_mix")


def _get(tree: Any, dotted: str) -> tuple[bool, Any]:
    node = tree
    for key in dotted.split("."):
        if not hasattr(node, "keys") or key not in node:
            return False, None
        node = node[key]
    return True, node


def check_kinds(config: Any, prefix: str = "") -> None:
    """Every KINDS field under `prefix` ('' = the whole tree; 'model' when `config` is the model block) that is
    present holds an allowed value; else UnknownName (a ValueError) naming the field and the allowed values."""
    lead = prefix + "." if prefix else ""
    for dotted, allowed in KINDS.items():
        if not dotted.startswith(lead):
            continue
        present, value = _get(config, dotted[len(lead):])
        if present and value not in allowed:
            raise UnknownName(unknown(f"LAM config {dotted}", value, allowed).replace(" (known: ", " (allowed: "))


def context_frames(config: Any) -> int:
    """Leading decoder context frames per clip (model.decoder.context; 0 in configs written before the field)."""
    return int(config.model.decoder.get("context", 0))


def check(config: Any) -> None:
    """The whole config: the kinds, plus combinations that cannot work."""
    check_kinds(config)
    m = config.model
    if m.encoder.motion_stem and m.encoder.kind == "dino":
        raise ValueError("model.encoder.motion_stem works with model.encoder.kind='patch' (DINOv2 has its own grid)")
    if config.loss.get("flow_moving_power", 0.0) < 0:
        raise ValueError(f"loss.flow_moving_power must be >= 0 (0 = every moving pixel weighs the same), got "
                         f"{config.loss.flow_moving_power}")
    context = context_frames(config)
    if context not in (0, 1):
        raise ValueError(f"model.decoder.context must be 0 (no context frame) or 1 (frame t - offset), got {context!r}")
    if context and config.data.source != "memory":
        raise ValueError("model.decoder.context=1 needs data.source='memory' (the streaming pipeline's LAM window "
                         "has no context frame before the clip)")
    if config.loss.flow_weight > 0 and not m.flow_head:
        raise ValueError("loss.flow_weight > 0 needs model.flow_head=True")
    if config.loss.get("agent_weight", 0.0) < 0 or config.loss.get("agent_radius", 4.0) <= 0:
        raise ValueError(f"loss.agent_weight must be >= 0 and loss.agent_radius > 0, got "
                         f"{config.loss.agent_weight} and {config.loss.agent_radius}")
    if config.loss.get("agent_weight", 0.0) > 0 and config.data.source != "memory":
        raise ValueError("loss.agent_weight > 0 needs data.source='memory' (the effector ground truth comes from "
                         "lam/data.py; the streaming LAM window carries none)")
    if m.get("action_from", "codes") not in ("codes", "latent"):  # read whenever the head exists, so checked always
        raise ValueError(f"model.action_from must be 'codes' or 'latent', got {m.action_from!r}")
    if config.loss.get("action_weight", 0.0) > 0:
        if m.get("action_head", 0) != 2:
            raise ValueError("loss.action_weight > 0 needs model.action_head=2 (the head predicts the first two "
                             f"action dimensions from the codes), got model.action_head={m.get('action_head', 0)}")
        if config.data.source != "memory":
            raise ValueError("loss.action_weight > 0 needs data.source='memory' (lam/data.py reads the actions of "
                             "the labelled episodes; the streaming LAM window carries none)")
        if not 0.0 <= config.data.get("action_share", 0.0) <= 1.0:
            raise ValueError(f"data.action_share must be in [0, 1], got {config.data.action_share}")
        if config.data.action_episodes < 0:
            raise ValueError(f"data.action_episodes must be >= 0 (0 = every episode with actions), got "
                             f"{config.data.action_episodes}")


def from_saved(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config.json of a LAM run as a ConfigDict: fields the run predates get LEGACY_DEFAULTS, fields nothing reads
    any more are dropped (a nonzero model.code_global_mix cannot be decoded and raises), then `check`."""
    d = copy.deepcopy(dict(saved))
    if d.get("model", {}).get("code_global_mix", 0.0):
        raise ValueError("model.code_global_mix is no longer supported (its checkpoints would decode wrongly); "
                         "retrain with model.code_pool='mean'")
    for dotted in REMOVED:
        *parents, leaf = dotted.split(".")
        present, node = _get(d, ".".join(parents)) if parents else (True, d)
        if present and isinstance(node, dict):
            node.pop(leaf, None)
    for dotted, value in LEGACY_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        present, node = _get(d, ".".join(parents))
        if present and isinstance(node, dict):
            node.setdefault(leaf, value)
    dec = d.get("model", {}).get("decoder")
    if isinstance(dec, dict):
        dec.setdefault("peg", LEGACY_DECODER_PEG.get(dec.get("kind"), False))
    config = ml_collections.ConfigDict(d)
    check(config)
    return config
