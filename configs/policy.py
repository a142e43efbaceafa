"""Policy fine-tuning presets: `lapa_demo`, `vipra_demo`, `scratch_demo` (the demo world), `lapa_debug`,
`vipra_debug` (tests) and `lapa_7b`, `vipra_7b` (the published fine-tuning setups).

    python -m policy.finetune --config=configs/policy.py:vipra_demo --workdir=runs/policy/vipra \
        --config.policy.pretrained=runs/demo/vla/vipra --config.policy.num_demos=50
    python -m policy.finetune --config=configs/policy.py:lapa_demo --workdir=runs/policy/lapa \
        --config.policy.pretrained=runs/demo/vla/lapa --config.policy.num_demos=50
    python -m policy.finetune --config=configs/policy.py:scratch_demo --workdir=runs/policy/scratch \
        --config.policy.num_demos=50

LAPA recipe: instruction + frame t -> "</vision> <action>" + 7 action-bin tokens (per-dimension quantile bins of the
normalized action, `policy.num_bins`, edges stored as the checkpoint asset action_bins.json) + "</action>" + EOS,
action-bin CE. ViPRA recipe: instruction + frames (t-2, t) -> H continuous slots by flow matching (ViPRA `fields_ca`).
`scratch_demo`: the ViPRA layout from a random initialisation (the no-pretraining baseline). The model sizes match
configs/lapa.py / configs/vipra.py presets so pretrained weights load.
"""

from __future__ import annotations

import ml_collections

from configs.vla_common import base, debug_model, demo_model, lwm_7b
from core.lookup import lookup

PRESETS = ("lapa_demo", "vipra_demo", "scratch_demo", "lapa_debug", "vipra_debug", "lapa_7b", "vipra_7b")


def get_config(preset: str = "vipra_demo") -> ml_collections.ConfigDict:
    lookup(PRESETS, preset, "policy preset")
    recipe, size = preset.split("_")
    c = base()
    c.recipe, c.preset = recipe, preset
    c.policy = ml_collections.ConfigDict({"pretrained": "", "tokenizers_from": "", "num_demos": 0,
                                          "num_bins": 256, "bin_fit_batches": 64,
                                          "execute_steps": 0, "eval_episodes": 50, "eval_seed": 1000})
    c.layout.update({"future_frame": False, "latent_steps": 0, "latent_separator": False})
    c.data.datasets, c.data.weights = ("demo_robot",), (1.0,)
    c.cotrain_fraction = 1.0
    c.model.latent_vocab_size = 0
    if recipe == "lapa":
        c.layout.update({"action_slots": 0, "action_tokens": 7})
        c.data.history_offsets, c.data.horizon = (0,), 1
        c.loss.update({"text": 0.0, "vision": 0.0, "latent": 0.0, "action_bins": 1.0, "flow": 0.0})
        c.model.action_vocab_size, c.model.action_dim = 256, 0
    else:  # vipra, scratch: flow matching over an H-step chunk
        c.data.history_offsets = (-2, 0)
        c.loss.update({"text": 0.0, "vision": 0.0, "latent": 0.0, "action_bins": 0.0, "flow": 1.0})
        c.model.action_vocab_size, c.model.action_dim = 0, 7
    if size == "7b":
        lwm_7b(c)
        if recipe == "lapa":  # LAPA finetune_real.sh: 2000 steps, batch 128, lr 2e-5
            c.layout.prompt_len = 64
            c.data.batch_size, c.train.total_steps, c.train.optimizer.lr = 128, 2000, 2e-5
        else:  # ViPRA finetune_libero_long.sh: 30k steps, batch 512, lr 4e-4, H = 14
            c.layout.update({"prompt_len": 128, "action_slots": 14})
            c.data.horizon = 14
            c.data.batch_size, c.train.total_steps, c.train.optimizer.lr = 512, 30_000, 4e-4
        return c
    (demo_model if size == "demo" else debug_model)(c)
    c.layout.prompt_len = 40
    if recipe != "lapa":
        c.layout.action_slots = 6
        c.data.horizon = 6
    if size == "demo":
        c.data.batch_size = 16
        c.train.total_steps = 500
        c.train.optimizer.lr = 5e-4
        c.policy.execute_steps = 3 if recipe != "lapa" else 1
    else:
        c.policy.num_bins = 16
        c.policy.bin_fit_batches = 2
        c.policy.eval_episodes = 2
    return c
