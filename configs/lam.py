"""Latent action model presets: `lapa`, `vipra` (full size, as in the lineage) and `lapa_demo`, `vipra_demo` (sized for
the demo world on a 2-core CPU), plus `lapa_tiny` / `vipra_tiny` for tests.

Launch (demo, ~9 min on a 2-core CPU; the evaluation reads the config stored with the checkpoint):
    python -m lam.train --config=configs/lam.py:lapa_demo --workdir=runs/lam_demo/lapa --overwrite
    python -m lam.evaluate --workdir=runs/lam_demo/lapa
Full size:
    python -m lam.train --config=configs/lam.py:lapa --workdir=runs/lam_lapa --config.data.root=/data/oxe
    python -m lam.train --config=configs/lam.py:vipra --workdir=runs/lam_vipra --config.data.root=/data/oxe
Override anything: --config.train.total_steps=2000 --config.loss.flow_weight=0.1
Flow supervision on real video (no ground truth; OpenCV Farneback between clip frames in the input pipeline):
    --config.model.flow_head=True --config.loss.flow_weight=0.1 --config.loss.flow_target=farneback
"""

from __future__ import annotations

import ml_collections

from lam.quantizer import LAPA_SCHEDULE, VIPRA_SCHEDULE
from latent_pretraining.training import loop

PRESETS = ("lapa", "vipra", "lapa_demo", "vipra_demo", "lapa_tiny", "vipra_tiny")


def _model_lapa() -> ml_collections.ConfigDict:
    """LAPA laq: 256 px, patch 32 (8×8 grid), dim 1024, 8+8 encoder layers, 8 decoder layers, 4 codes of 8."""
    return ml_collections.ConfigDict({
        "image_size": 256, "patch_size": 32, "dim": 1024, "heads": 16, "dim_head": 64, "cosine": True,
        "cpb_hidden": 1024, "ff_mult": 4.0, "quant_dim": 32, "codebook_size": 8, "code_grid": 2,
        "encode_deltas": True, "code_time_kernel": 1, "code_pool": "grid",
        "flow_head": False, "flow_scale": 1.0, "quant_warmup_steps": 0, "quant_norm": False, "slot_codebooks": False,
        "encoder": {"kind": "patch", "layout": "factorized", "spatial_depth": 8, "temporal_depth": 8, "depth": 0,
                    "peg": True, "motion_stem": 0},
        "decoder": {"kind": "cross_attention", "patch_size": 0, "depth": 8, "residual": False, "detach_queries": True,
                    "peg": False},
        "dino": _dino(),
    })


def _model_vipra() -> ml_collections.ConfigDict:
    """ViPRA laq: 224 px, patch 14 (16×16), dim 768, 6 ST encoder layers (on DINOv2-reg features), 8 causal FiLM
    decoder layers, 16 codes (4×4) per transition from a codebook of 8."""
    return ml_collections.ConfigDict({
        "image_size": 224, "patch_size": 14, "dim": 768, "heads": 16, "dim_head": 64, "cosine": True,
        "cpb_hidden": 768, "ff_mult": 4.0, "quant_dim": 32, "codebook_size": 8, "code_grid": 4,
        "encode_deltas": False, "code_time_kernel": 3, "code_pool": "grid",
        "flow_head": False, "flow_scale": 1.0, "quant_warmup_steps": 0, "quant_norm": False, "slot_codebooks": False,
        "encoder": {"kind": "dino", "layout": "interleaved", "spatial_depth": 0, "temporal_depth": 0, "depth": 6,
                    "peg": True, "motion_stem": 0},
        "decoder": {"kind": "film", "patch_size": 0, "depth": 8, "residual": False, "detach_queries": False,
                    "peg": True},
        "dino": _dino(),
    })


def _dino() -> ml_collections.ConfigDict:
    """DINOv2 ViT-B/14 with 4 registers (HF Dinov2WithRegistersModel layout); `weights` = safetensors path."""
    return ml_collections.ConfigDict({"hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_ratio": 4.0,
                                      "patch_size": 14, "image_size": 518, "num_register_tokens": 4,
                                      "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "weights": "",
                                      "lr_mult": 0.1})


def _data(offset: int, clip_len: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "source": "memory",  # 'memory': lam/data.py (small RLDS with ground truth); 'pipeline': data/loader.py
        "root": "runs/demo/data", "datasets": ("demo_robot", "demo_human"), "weights": (1.0, 1.0),
        "train_split": "train", "eval_split": "val", "clip_len": clip_len, "offset": offset, "batch_size": 32,
        "cache_dir": "", "max_episodes": 0, "shuffle_buffer": 10_000,
    })


def get_config(preset: str = "lapa_demo") -> ml_collections.ConfigDict:
    """The preset named `preset` (see PRESETS)."""
    if preset not in PRESETS:
        import difflib

        close = difflib.get_close_matches(preset, PRESETS, n=1, cutoff=0.0)
        raise KeyError(f"unknown LAM preset {preset!r}; did you mean {close[0]!r}? (known: {', '.join(PRESETS)})")
    family = preset.split("_")[0]
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.model = _model_lapa() if family == "lapa" else _model_vipra()
    c.quantizer = ml_collections.ConfigDict({
        "schedule": LAPA_SCHEDULE if family == "lapa" else VIPRA_SCHEDULE,
        "threshold": 0.1 / 64 * 8 if family == "lapa" else 0.015,  # LAPA: count/B < 0.1 over 10 steps of 64×4
        "source": "codes", "noise": 1e-3,
    })
    c.loss = ml_collections.ConfigDict({"pixel": "mse" if family == "lapa" else "l1", "pixel_weight": 1.0,
                                        "motion_weight": 0.0,
                                        "perceptual": "", "perceptual_weight": 0.0,
                                        "flow": "l1", "flow_weight": 0.0, "flow_moving_weight": 0.0,
                                        "flow_target": "ground_truth", "farneback_winsize": 9,
                                        "flow_start": 0, "flow_warmup": 0})
    c.data = _data(offset=30 if family == "lapa" else 1, clip_len=2 if family == "lapa" else 8)
    c.train = loop.default_config()
    t = c.train
    t.total_steps = 100_000 if family == "lapa" else 300_000
    t.optimizer.lr = 1e-4
    t.optimizer.schedule = "constant"
    t.optimizer.b2 = 0.99
    t.optimizer.clip_grad_norm = 0.5 if family == "lapa" else 6.0
    t.checkpoint.every = 5000
    t.log.main_metrics = ("loss", "rec", "psnr", "perplexity")
    c.eval = ml_collections.ConfigDict({"batches": 40, "batch_size": 64, "direction_bins": 8, "min_motion": 1.0,
                                        "position_bins": 8, "transfer_episodes": 4, "transfer_steps": 6,
                                        "checkpoint_step": -1})
    if preset.endswith("_demo") or preset.endswith("_tiny"):
        _shrink(c, family, tiny=preset.endswith("_tiny"))
    return c


def _shrink(c: ml_collections.ConfigDict, family: str, tiny: bool) -> None:
    """Demo world sizes (64 px frames, 8×8 patch grid). Deviations from the lineage, for a ~10-minute CPU run:
    residual decoder output (pred = first frame + Δ), no PEG (its random 3×3×3 conv scrambled the ~20 effector
    pixels), flow head + ground-truth flow loss as MSE with moving pixels weighted 51× (L1 on sparse flow stayed at
    'predict zero'), unweighted pixel MSE (a target-dependent motion weight kept PSNR below copy-last), batch-vector
    restarts of dead codes, a faster replacement schedule and a larger learning rate.

    LAPA demo codes: 4 linear projections of the grid-mean motion (code_pool='mean', so no slot ↔ place leak of
    position), each l2-normalized (quant_norm, cosine codes) and looked up in its own codebook of 8
    (slot_codebooks); the encoder adds a conv stem on the frame difference to the patch tokens (encoder.motion_stem);
    the flow term weighs 4.0. Direction probe of lapa_demo (seed 0, 4500 steps unless noted): Euclidean codes 0.68 →
    cosine 0.76 → + motion stem 0.79 → + slot codebooks 0.84 → 3500 steps 0.87 → flow weight 4: 0.87 / 0.86 / 0.86
    over seeds 0 / 1 / 2 (9 min each). Every measurement and the variants that did not help are in
    docs/lam_demo_experiments.md."""
    m = c.model
    m.image_size, m.patch_size = 64, 8
    m.dim, m.heads, m.dim_head, m.cpb_hidden, m.ff_mult = (32, 2, 16, 16, 2.0) if tiny else (64, 2, 32, 32, 3.0)
    m.quant_dim = 16 if tiny else 32
    m.flow_head, m.flow_scale = True, 4.0
    m.decoder.residual = True
    m.quant_warmup_steps = 0 if tiny else 600
    m.encoder.peg = m.decoder.peg = False  # PEG's random 3×3×3 conv scrambles the few effector pixels (8× slower probe)
    c.loss.motion_weight = 0.0  # target-dependent weights bias the frame towards 'change' (PSNR < copy-last)
    c.loss.flow, c.loss.flow_moving_weight = "mse", 50.0  # L1 on sparse flow sits at 'predict zero everywhere'
    c.loss.pixel = "mse"  # L1's sign gradients on JPEG noise drown the small moving regions at this budget
    if family == "lapa":
        m.encoder.spatial_depth, m.encoder.temporal_depth = 1, 1
        m.decoder.depth = 1 if tiny else 2
        m.code_pool = "mean"  # the 4 slots read the grid-mean motion: "which slot changed" cannot leak position
        m.quant_norm = True  # cosine codes: a code is a direction of z, not a speed (direction probe 0.68 -> 0.76)
        m.encoder.motion_stem = 16 if tiny else 32  # conv stem on frame differences (direction probe 0.76 -> 0.79)
        m.slot_codebooks = True  # one shared by 4 slots: each slot used 3-5 of its 8 codes (direction 0.78 -> 0.87)
    else:
        m.encoder.kind = "patch"
        m.encoder.depth = 1
        m.decoder.depth = 1 if tiny else 2
        m.code_grid = 4
    c.quantizer.schedule = ((620, 800, 20), (900, 2000, 100))
    c.quantizer.threshold = 0.02
    c.quantizer.source = "batch"
    c.loss.flow_weight = 4.0 if family == "lapa" else 0.5  # lapa_demo: 2.0 gave 0.87 / 0.81 / 0.86 over 3 seeds
    c.data.offset = 3 if family == "lapa" else 1
    c.data.clip_len = 2 if family == "lapa" else 4
    c.data.batch_size = 16
    c.data.cache_dir = "runs/lam_demo/cache"
    c.train.total_steps = 20 if tiny else (3500 if family == "lapa" else 2000)
    c.train.optimizer.lr = 1e-3
    c.train.optimizer.schedule = "warmup_cosine"
    c.train.optimizer.warmup_steps = 0 if tiny else 50
    c.train.optimizer.end_lr = 5e-5
    c.train.optimizer.clip_grad_norm = 1.0
    c.train.checkpoint.every = 500
    c.train.log.every = 25
    c.eval.batches = 8 if tiny else 40


def benchmark_main(argv: list[str] | None = None) -> int:
    """`scripts/benchmark.py lam ...` entry: lam.benchmark.main with presets resolved here."""
    from lam import benchmark

    return benchmark.main(argv, get_config=get_config)
