"""VQGAN tokenizer presets: `configs/vqgan.py:<preset>`.

demo — a small tokenizer for the 64-px demo world (f = 8 → 8×8 = 64 tokens, codebook 1024×32, EMA codebook with
       dead-code restarts, 1500 steps of 16 frames). Measured on the shared 2-core CPU: 23 min wall, round-trip
       PSNR 34.5 dB on all 1787 val frames (same-bit-budget 5×5 uint8 bicubic baseline: 15.3 dB), 97% of codes
       used, perplexity 552. Launch:

    python -m latent_pretraining.vqgan_train --config=configs/vqgan.py:demo --workdir=runs/vqgan_demo

lwm  — LWM's released architecture (256², f = 16 → 256 tokens, codebook 8192×64, no attention). Use it with
       converted weights (`scripts/convert_vqgan.py`); training it from scratch needs an accelerator:

    python -m latent_pretraining.vqgan_train --config=configs/vqgan.py:lwm --workdir=runs/vqgan_lwm

tiny — test-sized (two levels, 8 codes), for smoke tests only.

Override anything on the command line, e.g. `--config.train.total_steps=2000 --config.model.num_embeddings=512`.
"""

from __future__ import annotations

import ml_collections

from core.lookup import lookup
from latent_pretraining.model.vqgan import VQGANConfig
from latent_pretraining.training import loop

PRESETS = ("demo", "lwm", "tiny")


def _model(**kw) -> dict:
    """Every VQGANConfig field (its defaults are LWM's architecture), with `kw` changed."""
    return VQGANConfig(**kw).to_dict()


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    lookup(PRESETS, arg, "VQGAN preset")  # UnknownName is a ValueError
    c = ml_collections.ConfigDict()
    c.preset = arg
    c.data = ml_collections.ConfigDict({
        "root": "runs/demo/data", "datasets": ("demo_robot", "demo_human"), "train_split": "train",
        "val_split": "val", "resolution": 64, "stride": 1, "max_frames": 0, "val_frames": 512,
        "global_batch_size": 32, "flip": False,
        # datasets: "name[:version][@root]"; camera "" = each dataset's registry default (primary/secondary/wrist)
        "camera": "",
    })
    # loss weights: pixel L1 + L2, commitment (β), optional extra terms (0 = off)
    # (L2-dominated: an L1 term pulls rare pixels - small blocks on a textured table - to the background median)
    c.loss = ml_collections.ConfigDict({"l1": 0.2, "l2": 1.0, "commitment": 0.25, "gradient": 0.0,
                                        "adversarial": 0.0, "adversarial_start": 0, "disc_channels": 32})
    # EMA codebook: decay, dead-code restart (codes whose EMA count falls below `dead_threshold` are re-seeded
    # from random encodings of the current global batch; 0 disables), count given to a restarted code
    c.vq = ml_collections.ConfigDict({"decay": 0.98, "dead_threshold": 0.2, "restart_count": 1.0})
    c.eval = ml_collections.ConfigDict({"every": 500, "batch_size": 64})
    c.export = "tokenizer.safetensors"  # written into the workdir at every eval and at the end
    c.model = ml_collections.ConfigDict(_model())  # VQGANConfig fields; presets below change values only

    c.train = loop.default_config()
    c.train.total_steps = 1500
    c.train.checkpoint.every = 500
    c.train.log.every = 25
    c.train.log.main_metrics = ("loss", "l1", "perplexity")
    c.train.optimizer.lr = 1e-3
    c.train.optimizer.warmup_steps = 50
    c.train.optimizer.end_lr = 1e-4
    c.train.optimizer.b2 = 0.99
    c.train.optimizer.clip_grad_norm = 1.0

    if arg == "demo":
        c.model.update(_model(resolution=64, hidden_channels=16, channel_mult=(1, 2, 2, 4), num_res_blocks=1,
                              z_channels=32, num_embeddings=1024, embed_dim=32, num_groups=8))
        c.data.global_batch_size = 16
        c.data.stride = 2
    elif arg == "lwm":
        c.data.resolution = 256
        c.data.global_batch_size = 8
        c.train.total_steps = 100_000
        c.train.optimizer.lr = 1e-4
        c.train.checkpoint.every = 5000
        c.vq.dead_threshold = 0.01
        c.eval.every = 5000
        c.eval.batch_size = 8
    else:  # tiny
        c.model.update(_model(resolution=16, hidden_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                              z_channels=8, num_embeddings=8, embed_dim=4, num_groups=4))
        c.data.resolution = 16
        c.data.global_batch_size = 8
        c.data.val_frames = 16
        c.train.total_steps = 4
        c.train.optimizer.warmup_steps = 1
        c.train.checkpoint.every = 4
        c.train.log.every = 1
        c.eval.every = 0
        c.eval.batch_size = 8
    c.lock()
    return c
