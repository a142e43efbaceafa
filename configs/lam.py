"""Latent action model presets: `lapa`, `vipra` (full size, as in the lineage) and `lapa_demo`, `vipra_demo` (sized for
the demo world on a 2-core CPU), `lapa_cluttered`, `vipra_cluttered` (the demo sizes for camera-like video: a moving
camera and distractors; about 4x the cost), `lapa_metaworld`, `vipra_metaworld` (the demo sizes on Meta-World video,
issue #24 part 4), plus `lapa_tiny` / `vipra_tiny` for tests.

Launch (demo, ~9 min on a 2-core CPU; the evaluation reads the config stored with the checkpoint):
    python -m lam.train --config=configs/lam.py:lapa_demo --workdir=runs/lam_demo/lapa --overwrite
    python -m lam.evaluate --workdir=runs/lam_demo/lapa
Shaky video with distractors (e.g. scripts/make_demo_data.py --camera-jitter 1.0 --distractors 3; ~37 CPU-min):
    python -m lam.train --config=configs/lam.py:lapa_cluttered --workdir=runs/lam_cluttered/lapa \
        --config.data.root=runs/cluttered/data
Meta-World (data from scripts/make_metaworld_data.py; docs/metaworld.md):
    python -m lam.train --config=configs/lam.py:lapa_metaworld --workdir=runs/lam_metaworld/lapa \
        --config.data.root=runs/metaworld/data
Full size:
    python -m lam.train --config=configs/lam.py:lapa --workdir=runs/lam_lapa --config.data.root=/data/oxe
    python -m lam.train --config=configs/lam.py:vipra --workdir=runs/lam_vipra --config.data.root=/data/oxe
Override anything: --config.train.total_steps=2000 --config.loss.flow_weight=0.1
Flow supervision on real video (no ground truth; OpenCV Farneback between clip frames in the input pipeline):
    --config.model.flow_head=True --config.loss.flow_weight=0.1 --config.loss.flow_target=farneback

A preset is `<family>[_<size>]`: `base()` holds every field (with LAPA's full-size values), then the tables below
change values only (a key that is not in `base()` fails): FAMILY[family], and for the small sizes SMALL +
SMALL_FAMILY[family] (demo world, 64 px), then CLUTTERED (shaky, cluttered video), METAWORLD (Meta-World video) or
TINY + TINY_FAMILY[family] (tests).
Enum-like fields (encoder.layout, decoder.kind, code_pool, loss kinds, ...) are checked against lam/config.py KINDS.
Why the demo sizes deviate from the lineage, with every measurement: docs/lam_demo_experiments.md.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from core.lookup import lookup, set_field
from lam import config as lam_config
from lam.quantizer import LAPA_SCHEDULE, VIPRA_SCHEDULE
from latent_pretraining.training import loop

FAMILIES = ("lapa", "vipra")
SIZES = ("", "demo", "cluttered", "metaworld", "tiny")  # "" = full size
PRESETS = ("lapa", "vipra", "lapa_demo", "vipra_demo", "lapa_cluttered", "vipra_cluttered", "lapa_metaworld",
           "vipra_metaworld", "lapa_tiny", "vipra_tiny")


def base() -> ml_collections.ConfigDict:
    """Every field a LAM run reads, with the full-size LAPA values (LAPA laq: 256 px, patch 32 (8×8 grid), dim 1024,
    8+8 encoder layers, 8 decoder layers, 4 codes of 8)."""
    c = ml_collections.ConfigDict()
    c.preset = ""
    c.model = ml_collections.ConfigDict({
        "image_size": 256, "patch_size": 32, "dim": 1024, "heads": 16, "dim_head": 64, "cosine": True,
        "cpb_hidden": 1024, "ff_mult": 4.0, "quant_dim": 32, "codebook_size": 8, "code_grid": 2,
        "encode_deltas": True, "code_time_kernel": 1, "code_pool": "grid",
        "flow_head": False, "flow_scale": 1.0, "quant_warmup_steps": 0, "quant_norm": False, "slot_codebooks": False,
        "stabilize": False,  # register each clip frame to the first (camera shake; lam/stabilize.py)
        # action_head: 2 = a linear map from each transition's quantized codes to the mean of its first two action
        # dimensions, trained by loss.action_weight on the labelled episodes only (data.action_episodes); 0 = none
        "action_head": 0,
        # what the action head reads: "codes" (the quantized codes, so the label must pass the codebook) or "latent"
        # (the encoder's vectors before quantization, as Nikulin et al. 2025 do; the codes then follow the encoder)
        "action_from": "codes",
        "encoder": {"kind": "patch", "layout": "factorized", "spatial_depth": 8, "temporal_depth": 8, "depth": 0,
                    "peg": True, "motion_stem": 0},
        # decoder.context: frames before the clip the decoder (never the encoder) also reads: 0 = none; 1 = frame
        # t − offset (clamped to the episode's first frame), whose motion into t is added to the decoder's tokens, so
        # constant-velocity movers can be extrapolated without codes (lam/model.py ContextStem, docs/lam.md)
        "decoder": {"kind": "cross_attention", "patch_size": 0, "depth": 8, "residual": False, "detach_queries": True,
                    "peg": False, "context": 0},
        # DINOv2 ViT-B/14 with 4 registers (HF Dinov2WithRegistersModel layout); `weights` = safetensors path
        "dino": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_ratio": 4.0, "patch_size": 14,
                 "image_size": 518, "num_register_tokens": 4, "layer_norm_eps": 1e-6, "layerscale_value": 1.0,
                 "weights": ""},
    })
    c.quantizer = ml_collections.ConfigDict({
        "schedule": LAPA_SCHEDULE,
        "threshold": 0.1 / 64 * 8,  # LAPA: count/B < 0.1 over 10 steps of 64×4
        "source": "codes", "noise": 1e-3,
    })
    c.loss = ml_collections.ConfigDict({
        "pixel": "mse", "pixel_weight": 1.0, "motion_weight": 0.0,
        "perceptual_weight": 0.0,  # needs a feature network passed to lam.train.make_loss_fn(feature_fn=...)
        "flow": "l1", "flow_weight": 0.0, "flow_moving_weight": 0.0, "flow_target": "ground_truth",
        "flow_moving_power": 0.0,  # > 0: moving pixels' extra weight ∝ |flow|^p (faster movers count more)
        "farneback_winsize": 9, "flow_start": 0, "flow_warmup": 0,
        "farneback_gate": 0.0,  # > 0: Farneback flow kept only where registered frames differ > k noise sigmas
                                # (lam/flow_targets.py noise_gate); 0 = the raw flow
        # flow_target='block_match' (lam/flow_targets.py BlockMatchParams): search radius px, box side, penalty per
        # px² of displacement, noise gate in sigmas (0 = off), match on camera-registered frames, forward-backward
        # check tolerance in px (0 = off)
        "block_match_radius": 6, "block_match_window": 5, "block_match_penalty": 10.0, "block_match_gate": 8.0,
        "block_match_register": True, "block_match_consistency": 1.0,
        # > 0: squared error of model.action_head's prediction against the transition's mean action (in stds), on
        # clips of labelled episodes: a semi-supervised LAM (a few action labels against distractors; docs/lam.md)
        "action_weight": 0.0,
        # > 0: an oracle agent mask (MaskLAM's idea with the ground truth for a segmentation model): pixels within
        # agent_radius px of the effector in either frame of a transition weigh 1 + agent_weight in the pixel and flow
        # terms. Needs the effector ground truth (demo world, Meta-World); a diagnostic, no preset uses it
        "agent_weight": 0.0, "agent_radius": 4.0,
    })
    c.data = ml_collections.ConfigDict({
        "source": "memory",  # 'memory': lam/data.py (small RLDS with ground truth); 'pipeline': data/loader.py
        "root": "runs/demo/data", "datasets": ("demo_robot", "demo_human"), "weights": (1.0, 1.0),
        "train_split": "train", "eval_split": "val", "clip_len": 2, "offset": 30, "batch_size": 32,
        "cache_dir": "", "max_episodes": 0, "shuffle_buffer": 10_000,
        "camera": "",  # '' = the registry's default camera; 'primary' | 'secondary' | 'wrist'
        "stats_dir": "",  # pipeline normalization stats; '' = next to each dataset; `python -m data.stats`
        # with loss.action_weight > 0: the LAM reads the actions of the first N episodes of each dataset that has
        # actions (file order, the policy's "first N demos"); 0 = all of them
        "action_episodes": 0,
        "action_share": 0.0,  # > 0: that share of every batch drawn from the labelled episodes
    })
    c.train = loop.default_config()
    t = c.train
    t.total_steps = 100_000
    t.optimizer.lr = 1e-4
    t.optimizer.schedule = "constant"
    t.optimizer.b2 = 0.99
    t.optimizer.clip_grad_norm = 0.5
    t.checkpoint.every = 5000
    t.log.main_metrics = ("loss", "rec", "psnr", "perplexity")
    c.eval = ml_collections.ConfigDict({"batches": 40, "batch_size": 64, "direction_bins": 8, "min_motion": 1.0,
                                        "transfer_episodes": 4, "transfer_steps": 6, "checkpoint_step": -1,
                                        "mlp_probe_hidden": 256})
    return c


# Full-size family differences from base() (LAPA's values). ViPRA laq: 224 px, patch 14 (16×16), dim 768, 6 ST
# encoder layers (on DINOv2-reg features), 8 causal FiLM decoder layers, 16 codes (4×4) per transition of 8 codes.
FAMILY: dict[str, dict[str, Any]] = {
    "lapa": {},
    "vipra": {
        "model.image_size": 224, "model.patch_size": 14, "model.dim": 768, "model.cpb_hidden": 768,
        "model.code_grid": 4, "model.encode_deltas": False, "model.code_time_kernel": 3,
        "model.encoder.kind": "dino", "model.encoder.layout": "interleaved", "model.encoder.spatial_depth": 0,
        "model.encoder.temporal_depth": 0, "model.encoder.depth": 6,
        "model.decoder.kind": "film", "model.decoder.detach_queries": False, "model.decoder.peg": True,
        "quantizer.schedule": VIPRA_SCHEDULE, "quantizer.threshold": 0.015,
        "loss.pixel": "l1", "data.clip_len": 8, "data.offset": 1,
        "train.total_steps": 300_000, "train.optimizer.clip_grad_norm": 6.0,
    },
}

# The demo world (64 px frames, 8×8 patch grid), both families: residual decoder, no PEG, flow head with
# moving-pixel weighted MSE flow, pixel MSE, batch-vector dead-code restarts on a faster schedule, larger lr.
SMALL: dict[str, Any] = {
    "model.image_size": 64, "model.patch_size": 8, "model.dim": 64, "model.heads": 2, "model.dim_head": 32,
    "model.cpb_hidden": 32, "model.ff_mult": 3.0, "model.quant_dim": 32, "model.flow_head": True,
    "model.flow_scale": 4.0, "model.decoder.residual": True, "model.quant_warmup_steps": 600,
    "model.encoder.peg": False, "model.decoder.peg": False, "model.decoder.depth": 2,
    "loss.flow": "mse", "loss.flow_moving_weight": 50.0, "loss.pixel": "mse",
    "quantizer.schedule": ((620, 800, 20), (900, 2000, 100)), "quantizer.threshold": 0.02, "quantizer.source": "batch",
    "data.batch_size": 16, "data.cache_dir": "runs/lam_demo/cache",
    "train.optimizer.lr": 1e-3, "train.optimizer.schedule": "warmup_cosine", "train.optimizer.warmup_steps": 50,
    "train.optimizer.end_lr": 5e-5, "train.optimizer.clip_grad_norm": 1.0, "train.checkpoint.every": 500,
    "train.log.every": 25,
}
SMALL_FAMILY: dict[str, dict[str, Any]] = {
    # 4 cosine code slots read from the grid-mean motion, one codebook of 8 per slot, a conv stem on frame differences
    "lapa": {"model.encoder.spatial_depth": 1, "model.encoder.temporal_depth": 1, "model.code_pool": "mean",
             "model.quant_norm": True, "model.encoder.motion_stem": 32, "model.slot_codebooks": True,
             "loss.flow_weight": 4.0, "data.offset": 3, "data.clip_len": 2, "train.total_steps": 3500},
    # ViPRA kept: multi-frame clips (3 frames, 2 transitions), one interleaved spatio-temporal encoder layer, the
    # causal FiLM decoder, 16 codes per transition; lapa_demo's motion recipe on top (codes from feature differences,
    # grid-mean slots, cosine codes, a codebook per slot, the motion stem, flow weight 4, clip offset 3); 3500 steps
    # like lapa_demo: at 2000 one seed of three started late (docs/lam_demo_experiments.md)
    "vipra": {"model.encoder.kind": "patch", "model.encoder.depth": 1, "model.encode_deltas": True,
              "model.code_pool": "mean",
              "model.quant_norm": True, "model.encoder.motion_stem": 32, "model.slot_codebooks": True,
              "loss.flow_weight": 4.0, "data.offset": 3, "data.clip_len": 3, "train.total_steps": 3500},
}
# Meta-World video (64 px, camera corner2): the demo presets on another dataset. No ground-truth flow there, so the
# flow head learns Farneback targets (not block matching: on the hand's pixel track Farneback's estimate points the
# right 45° way in 0.68-0.74 of moving training pairs, block matching in 0.51; lam.flow_check, docs/lam.md).
# The clip offset comes from the training split's hand motion in pixels, chosen before any LAM was trained: the hand
# moves a median 0.22-0.24 px per step at 64 px (the demo effector 1.8 px), so
# offset 3 would leave 79-86% of transitions under the probes' 1 px floor; at 10 the median is 2.2-2.4 px, 85-97%
# of transitions move >= 1 px, p90 3.5-4.3 px stays inside Farneback's 9 px window, and vipra's 2 transitions span
# 20 steps of 62-74-step episodes (docs/metaworld.md, "The LAM on 3-D video").
METAWORLD: dict[str, Any] = {
    "data.root": "runs/metaworld/data", "data.datasets": ("metaworld_robot", "metaworld_video"),
    "data.cache_dir": "runs/lam_metaworld/cache", "data.offset": 10, "loss.flow_target": "farneback",
}
# Camera-like video (issue #21 part 5: 1 px camera shake, 3 drifting distractor discs): the demo sizes with the frames
# registered to the clip's first (camera shake), a 16 x 16 grid of 4 px patches (the effector and the discs are about
# 5 px across: on 8 px patches the gripper looked like one more disc) and max-pooled code slots (a channel's largest
# and smallest change anywhere on the grid: the fastest mover, the effector, decides it instead of a mean with the
# discs). Measured in docs/lam.md, "Finer patches and max-pooled slots"; about 4x the demo presets' cost.
CLUTTERED: dict[str, Any] = {"model.stabilize": True, "model.patch_size": 4, "model.code_pool": "max"}
# Tests: the demo presets shrunk further (a few seconds per run).
TINY: dict[str, Any] = {
    "model.dim": 32, "model.dim_head": 16, "model.cpb_hidden": 16, "model.ff_mult": 2.0, "model.quant_dim": 16,
    "model.quant_warmup_steps": 0, "model.decoder.depth": 1, "train.total_steps": 20,
    "train.optimizer.warmup_steps": 0, "eval.batches": 8,
}
TINY_FAMILY: dict[str, dict[str, Any]] = {"lapa": {"model.encoder.motion_stem": 16},
                                          "vipra": {"model.encoder.motion_stem": 16}}


def _apply(c: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    for key, value in values.items():
        set_field(c, key, value, "LAM config field")  # presets change values only: unknown keys fail


def get_config(preset: str = "lapa_demo") -> ml_collections.ConfigDict:
    """The preset named `preset` (see PRESETS and the module docstring)."""
    lookup(PRESETS, preset, "LAM preset")
    family, _, size = preset.partition("_")
    c = base()
    c.preset = preset
    _apply(c, FAMILY[family])
    if size in ("demo", "cluttered", "metaworld", "tiny"):
        _apply(c, {**SMALL, **SMALL_FAMILY[family]})
    if size == "cluttered":
        _apply(c, CLUTTERED)
    if size == "metaworld":
        _apply(c, METAWORLD)
    if size == "tiny":
        _apply(c, {**TINY, **TINY_FAMILY[family]})
    lam_config.check(c)
    return c
