"""Policy fine-tuning on labelled demonstrations: the LAPA recipe (discrete action bins) and the ViPRA recipe (flow
matching over an H-step chunk), from a pretrained VideoLLaMA run or from scratch, then a closed-loop evaluation.

    python -m policy.finetune --config=configs/policy.py:vipra_demo --workdir=runs/policy/vipra \
        --config.policy.pretrained=runs/demo/vla/vipra --config.policy.num_demos=50

It is the VideoLLaMA trainer (latent_pretraining/train.py) with a fine-tuning layout (configs/policy.py): the
pretrained run's text tokenizer and VQGAN are reused, its weights initialise every matching parameter (new heads
start fresh; pretraining-only tables are dropped, both logged), `policy.num_demos` limits the training split to the
first N episodes (TFDS split slicing), and for the LAPA recipe per-dimension quantile bins are fitted on the
training actions and stored as the checkpoint asset `action_bins.json`. After training, `closed_loop.json` holds the
demo-world success rate (policy/evaluate.py) when `policy.eval_episodes` > 0.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from core.errors import InvalidInput
from latent_pretraining import train as vla_train
from latent_pretraining.training.checkpoint import read_assets
from policy.action_tokenizer import ActionTokenizer

MODEL_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "vocab_size")


def use_pretrained(config: ml_collections.ConfigDict, src: str, weights: bool = True) -> None:
    """Points the config at a pretrained run: its text tokenizer, VQGAN and (with `weights`) its parameters."""
    assets = read_assets(os.path.join(os.path.abspath(src), "checkpoints"))
    for name in ("tokenizer.model", "frozen.json", "video_llama.json"):
        if name not in assets:
            raise FileNotFoundError(f"{src}: checkpoint assets lack {name!r}: is it a latent_pretraining.train run?")
    vq_path = json.loads(assets["frozen.json"])["vqgan"]["path"]
    if not os.path.exists(vq_path):  # older runs recorded it relative to the directory they were trained in
        from core.errors import UserError

        raise UserError(f"the pretrained run {src} records its VQGAN at {vq_path!r}, which does not exist from "
                        f"{os.getcwd()}: run from the directory it was trained in, or restore that file")
    import tempfile

    fd, tok_path = tempfile.mkstemp(suffix="_tokenizer.model")  # the run stores it again as its own asset
    with os.fdopen(fd, "wb") as f:
        f.write(assets["tokenizer.model"])
    config.text.tokenizer = tok_path
    config.vision.tokenizer = vq_path
    if weights:
        config.init.checkpoint = src
    pre = json.loads(assets["video_llama.json"])["llama"]
    ours = vla_train._llama_config(config, pre["vocab_size"]).to_dict()
    bad = {k: (ours[k], pre[k]) for k in MODEL_FIELDS if ours[k] != pre[k]}
    if bad:
        raise InvalidInput(f"config.model does not match the pretrained run {src} (field: (config, pretrained)): {bad}")


def closed_loop_world(config: ml_collections.ConfigDict) -> tuple[str, Any]:
    """(world, world config) of the closed-loop test after fine-tuning (policy.eval_episodes > 0): the world the
    fine-tuning demos were made in, from the first dataset's generation.json: the demo world's generator config
    (tasks, size, distractors, ...) or the Meta-World tasks. It was the default demo world whatever the demos were."""
    from core.errors import UserError
    from data import oxe
    from data.mixture import parse_mixture

    for e in parse_mixture(list(config.data.datasets), name="data.datasets").entries:
        path = os.path.join(e.root or config.data.root, e.name, e.version or oxe.get_spec(e.name).default_version)
        if e.name == "demo_robot":
            from policy.evaluate import world_config_from_dataset

            return "demo", world_config_from_dataset(path)
        if e.name == "metaworld_robot":
            from data.metaworld.tasks import generated_tasks
            from policy.metaworld_eval import MetaWorldEvalConfig

            return "metaworld", MetaWorldEvalConfig(tasks=tuple(generated_tasks(e.root or config.data.root)))
    raise UserError(f"policy.eval_episodes={config.policy.eval_episodes} needs a simulated world, but data.datasets "
                    f"{list(config.data.datasets)} has no demo_robot or metaworld_robot dataset: set "
                    "--config.policy.eval_episodes=0 (and evaluate with python -m policy.evaluate)")


def require_actions(datasets: tuple[str, ...] | list[str]) -> None:
    """Refuses video-only datasets up front: a policy learns actions, and their rows carry none (action_valid all
    false), so fine-tuning on them would train on padding. Entries are `name[:version][@root][:weight]`."""
    from core.errors import UserError
    from data import oxe

    for entry in datasets:
        name = str(entry).partition("@")[0].partition(":")[0].partition("=")[0]
        if not oxe.get_spec(name).has_actions:
            raise UserError(f"dataset {name!r} is video-only (no actions in the registry entry): policy.finetune "
                            "needs datasets with actions in config.data.datasets")


def fit_action_bins(setup: vla_train.Setup, num_bins: int, batches: int) -> ActionTokenizer:
    """Quantile bins from `batches` training batches of normalized actions (padding excluded)."""
    it = vla_train.make_data(setup, setup.config.data.train_split, seed=setup.config.train.seed + 17)
    rows = []
    for _ in range(batches):
        b = next(it)
        rows.append(np.asarray(b.actions)[np.asarray(b.action_pad_mask)])
    actions = np.concatenate(rows)
    logging.info("action bins: %d per dimension from %d actions", num_bins, len(actions))
    return ActionTokenizer.fit(actions, num_bins)


def bins_transform(tok: ActionTokenizer):
    """Host batch step: actions f32[B, H, A] -> action_bins int32[B, H·A]."""

    def fn(batch: dict) -> dict:
        a = np.asarray(batch["actions"])
        return {**batch, "action_bins": tok.encode(a).reshape(a.shape[0], -1)}

    return fn


def finetune(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, overwrite: bool = False
             ) -> dict[str, Any]:
    """Fine-tunes, evaluates held-out losses and (optionally) closed-loop success; returns the summary."""
    from latent_pretraining.training import loop

    # before fitting bins / building data
    loop.validate(config.train, batch_size=config.data.batch_size, batch_name="data.batch_size")
    require_actions(tuple(config.data.datasets))
    workdir = os.path.abspath(workdir)
    p = config.policy
    if p.pretrained:
        use_pretrained(config, p.pretrained)
    elif p.tokenizers_from:  # e.g. the scratch baseline: same tokenizers as the pretrained recipes, random weights
        use_pretrained(config, p.tokenizers_from, weights=False)
    if p.num_demos:
        config.data.train_split = f"{config.data.train_split.split('[')[0]}[:{int(p.num_demos)}]"
    setup = vla_train.build(config, latent=None)
    if setup.spec.action_tokens:
        if setup.spec.action_tokens != config.data.horizon * 7:
            raise InvalidInput(f"layout.action_tokens {setup.spec.action_tokens} must be data.horizon x 7 actions")
        tok = fit_action_bins(setup, p.num_bins, p.bin_fit_batches)
        if tok.num_bins > setup.model_config.action_vocab_size:
            raise InvalidInput(f"policy.num_bins {tok.num_bins} > model.action_vocab_size "
                               f"{setup.model_config.action_vocab_size}")
        setup.assets["action_bins.json"] = tok.to_json()
        setup.batch_transform = bins_transform(tok)
    setup.assets["policy.json"] = {"recipe": config.recipe, "pretrained": p.pretrained, "num_demos": p.num_demos,
                                   "execute_steps": p.execute_steps,
                                   "proprio_dim": setup.model_config.proprio_dim}
    world = closed_loop_world(config) if p.eval_episodes > 0 else None  # known before training, not after
    summary = vla_train.train(config, workdir, resume=resume, overwrite=overwrite, setup=setup)
    if world is not None:
        from policy.evaluate import evaluate
        from policy.policy import Policy

        policy = Policy.from_checkpoint(workdir)
        res = evaluate(policy, episodes=p.eval_episodes, seed=p.eval_seed, world=world[0], world_config=world[1],
                       execute_steps=p.execute_steps or None, progress=False,
                       gif_dir=os.path.join(workdir, "rollouts"))  # the first episodes' GIFs, for the run report
        summary["closed_loop"] = res
        with open(os.path.join(workdir, "closed_loop.json"), "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    logging.getLogger().setLevel(logging.INFO)
    from latent_pretraining.training import distributed

    distributed.initialize(f.config.train.distributed)  # multi-host: before anything touches a device
    summary = finetune(f.config, f.workdir, resume=f.resume, overwrite=f.overwrite)
    brief = {k: v for k, v in summary.items() if k not in ("train", "closed_loop")}
    if "closed_loop" in summary:  # per-episode records stay in closed_loop.json
        brief["closed_loop"] = {k: v for k, v in summary["closed_loop"].items() if k not in ("records", "metadata")}
    print(json.dumps(brief, indent=2, default=str))


if __name__ == "__main__":
    from ml_collections import config_flags

    from core import cli
    from latent_pretraining.training import loop as _loop

    config_flags.DEFINE_config_file("config", None, "e.g. configs/policy.py:vipra_demo", lock_config=True)
    _loop.define_flags()
    cli.run_absl(main, trainer=True)
