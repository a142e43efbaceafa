"""ViPRA recipe: dynamics pretraining (frames t-2, t -> future frame t+H "latent state" + S × (C codes + eola)),
co-trained with a flow-matching action chunk on the rows that have actions.

The S latent steps are the LAM's transitions t -> t+k -> ... -> t+S·k (k = the LAM's clip offset, the window's
clip_stride), so S·k = H puts the last one on the future frame: 7b S = H = 14 with ViPRA's offset-1 LAM (16 codes of
8 per transition); demo S = 2, k = 3, H = 6 with the `vipra_demo` LAM (16 codes, one codebook of 8 per code slot,
clips of 3 frames: one LAM call labels both transitions; docs/lam_demo_experiments.md).

Presets: `debug` (tests), `demo` (minutes on a 2-core CPU on the demo world), `7b` (the published setup).
    python -m latent_pretraining.train --config=configs/vipra.py:demo --workdir=runs/vla_demo/vipra --overwrite
    python -m latent_pretraining.train --config=configs/vipra.py:7b --workdir=runs/vipra_7b \
        --config.init.checkpoint=ckpt/lwm_chat_1m --config.text.tokenizer=ckpt/tokenizer.model \
        --config.vision.tokenizer=ckpt/vqgan.safetensors --config.latent.lam_workdir=runs/lam_vipra \
        --config.data.root=/data/oxe
Layout (sequence.py): video rows = prompt + f(t-2)+eof + f(t)+eof + f(t+H)+eov + "</vision> <dynamics>" +
H × (C codes + eola) + "</dynamics>" + EOS, loss 0.48 latent + 0.48 vision + 0.02 text (reference/vipra.md §4);
action rows (probability `cotrain_fraction` among rows with actions) = prompt + f(t-2)+eof + f(t)+eov +
"</vision> <action>" + H slots + "</action>" + EOS with flow matching (weight loss.flow). The published pretraining
had no action rows (cotrain_fraction 0); its fine-tuning used the action layout alone.
"""

from __future__ import annotations

import ml_collections

from configs.vla_common import base, debug_model, demo_model, lwm_7b
from core.lookup import lookup

PRESETS = ("debug", "demo", "7b")


def get_config(preset: str = "demo") -> ml_collections.ConfigDict:
    lookup(PRESETS, preset, "ViPRA preset")
    c = base()
    c.recipe, c.preset = "vipra", preset
    c.layout.update({"future_frame": True, "latent_separator": True, "video_open": " </vision> <dynamics>",
                     "video_close": " </dynamics>"})
    c.data.history_offsets = (-2, 0)
    c.loss.update({"text": 0.02, "vision": 0.48, "latent": 0.48, "flow": 1.0})
    c.model.action_vocab_size = 0
    if preset == "7b":
        lwm_7b(c)
        c.layout.update({"prompt_len": 128, "latent_steps": 14, "action_slots": 14})
        c.data.horizon = 14
        c.data.datasets = ("fractal20220817_data", "bridge_dataset", "kuka", "ssv2")
        c.data.weights = (1.0, 1.0, 1.0, 1.0)
        c.data.batch_size = 320
        c.latent.lam_workdir = "runs/lam_vipra"
        c.cotrain_fraction = 0.0
        c.train.optimizer.lr = 4e-5
        # 2 micro-batches of 160: the step compiles to 57 GiB per device on 8 devices (fsdp=8) instead of 103 GiB
        # (python scripts/benchmark.py compile --config configs/vipra.py:7b --mesh fsdp=8; docs/scaling.md)
        c.train.optimizer.grad_accum_steps = 2
        c.train.total_steps = 50_000
        c.train.mesh.update({"dp": 1, "fsdp": -1, "tp": 1, "sp": 1})
        c.train.checkpoint.every = 500
    else:
        demo_model(c) if preset == "demo" else debug_model(c)
        c.latent.lam_workdir = "runs/lam_demo/vipra"
        c.data.horizon = 6
        # debug LAMs (lapa_tiny / vipra_tiny) are random test fixtures: 6 steps exercise the chunked labelling; demo:
        # 2 transitions of the vipra_demo LAM's offset 3 span the horizon (tests/test_lam_vipra_layout.py)
        c.layout.update({"prompt_len": 40, "latent_steps": 2 if preset == "demo" else 6, "action_slots": 6})
        c.cotrain_fraction = 0.5
        if preset == "demo":
            c.data.batch_size = 8
            c.train.total_steps = 600
    return c
