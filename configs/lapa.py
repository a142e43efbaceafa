"""LAPA recipe: latent pretraining (instruction + 1 frame -> 4 latent-action codes of a codebook of 8).

Presets: `debug` (tests), `demo` (minutes on a 2-core CPU on the demo world), `7b` (the published setup).
    python -m latent_pretraining.train --config=configs/lapa.py:demo --workdir=runs/vla_demo/lapa --overwrite
    python -m latent_pretraining.train --config=configs/lapa.py:7b --workdir=runs/lapa_7b \
        --config.init.checkpoint=ckpt/lwm_chat_1m --config.text.tokenizer=ckpt/tokenizer.model \
        --config.vision.tokenizer=ckpt/vqgan.safetensors --config.latent.lam_workdir=runs/lam_lapa \
        --config.data.root=/data/oxe
Layout (sequence.py): prompt + frame t (g² ids + eov) + "</vision> <delta>" + 4 codes + "</delta>" + EOS; loss
0.99 latent CE + 0.01 text CE (reference/lapa.md §2). The frozen LAM labels the pair (t, t + its training offset).
"""

from __future__ import annotations

import ml_collections

from configs.vla_common import base, debug_model, demo_model, lwm_7b
from core.lookup import lookup

PRESETS = ("debug", "demo", "7b")


def get_config(preset: str = "demo") -> ml_collections.ConfigDict:
    lookup(PRESETS, preset, "LAPA preset")
    c = base()
    c.recipe, c.preset = "lapa", preset
    c.layout.update({"future_frame": False, "latent_steps": 1, "latent_separator": False, "action_slots": 0,
                     "video_open": " </vision> <delta>", "video_close": " </delta>"})
    c.data.history_offsets, c.data.horizon = (0,), 1
    c.loss.update({"text": 0.01, "vision": 0.0, "latent": 0.99, "flow": 0.0})
    c.model.action_dim = 0  # LAPA has no continuous head; action bins come in fine-tuning (policy/)
    if preset == "7b":
        lwm_7b(c)
        c.layout.prompt_len = 64
        c.data.datasets, c.data.weights = ("fractal20220817_data", "bridge_dataset", "kuka"), (1.0, 1.0, 1.0)
        c.data.batch_size = 256
        c.latent.lam_workdir = "runs/lam_lapa"
        c.train.total_steps = 70_000
        c.train.mesh.update({"dp": 1, "fsdp": -1, "tp": 1, "sp": 1})
        c.train.checkpoint.every = 1000
    elif preset == "demo":
        demo_model(c)
        c.latent.lam_workdir = "runs/lam_demo/lapa"
        c.layout.prompt_len = 40
        c.data.batch_size = 16
        c.train.total_steps = 600
    else:
        debug_model(c)
        c.latent.lam_workdir = "runs/lam_demo/lapa"
        c.layout.prompt_len = 40
    return c
