"""The worlds the main pipeline (scripts/demo.py) and the comparison (scripts/compare.py) run in: one table, so that
every world-specific choice (which datasets each stage reads, how the labelled demos are evaluated, which world seeds
the data used, the default sizes) is a value here, not a branch in the scripts.

  demo       the built-in 2-D world (`make demo`): every stage reads the presets' own datasets (demo_robot +
             demo_human), evaluation in the world the demos were rendered in (`policy.evaluate --data`).
  metaworld  the transfer experiment of issue #24 part 3 (docs/metaworld.md): the VQGAN, both LAMs and both
             VideoLLaMA pretrainings read only `metaworld_video`, action-free video of the 6 source tasks; policies
             are fine-tuned on the first N episodes of `metaworld_robot` (the 6 disjoint target tasks, with
             actions) and evaluated closed loop on exactly the tasks that dataset was generated for.

A world's `budgets` are the sizes of a whole run (values only): the demo world's are `make demo`'s; Meta-World's
`cpu` preset is sized from measured per-stage costs to a few hours of 2-core CPU, `gpu` is a larger run for one
accelerator (docs/metaworld.md, "The transfer experiment").
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from core.errors import UserError, unknown

VERSION = "1.0.0"  # both worlds' RLDS datasets


@dataclasses.dataclass(frozen=True)
class Budget:
    """The sizes of one pipeline run. 0 steps = the stage preset's own number (configs/*.py)."""

    episodes: int  # train episodes per dataset (data generation)
    val_episodes: int  # 0 = the generator's default
    vqgan_steps: int
    lam_steps: int
    vla_steps: int
    compare_preset: str  # scripts/compare.py GRIDS entry: demo counts, fine-tuning seeds, episodes, recipes
    finetune_steps: int = 0
    # the demo world: stage 5's labelled demos as their own dataset, written by stage 1 to OUT/data_finetune with
    # these writer.GenerationConfig values over stage 1's (its `seed` is added to --seed); {} = stage 1's datasets
    finetune_data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PipelineWorld:
    """One world of the pipeline; the `*_args` are extra flags of that stage's trainer (config overrides)."""

    name: str
    title: str  # the comparison report's heading
    robot: str  # the labelled-demo dataset: fine-tuning data, and its generation config sets the evaluated world
    pretrain: tuple[str, ...]  # what the VQGAN, the LAMs and the VideoLLaMA pretraining read
    vqgan_args: tuple[str, ...]
    lam_size: str  # configs/lam.py preset size: the LAM stages train `<recipe>_<lam_size>`
    lam_args: tuple[str, ...]
    vla_args: tuple[str, ...]
    finetune_args: tuple[str, ...]
    recipes: tuple[str, ...]  # scripts/compare.py RECIPES this world can train and evaluate
    budgets: dict[str, Budget]
    eval_args: Callable[[str], list[str]]  # data root -> policy.evaluate flags naming the evaluated world
    eval_world_seed: Callable[[int, int], int]  # (--eval-seed, episode i) -> the world seed episode i plays
    data_seeds: Callable[[str], dict[int, str]]  # data root -> {generation world seed: "dataset split episode i"}
    # (data root, train episodes, val episodes, seed) -> the generator's command; None: scripts/demo.py generates the
    # demo datasets in-process (its figures table goes to logs/data.log)
    data_command: Callable[[str, int, int, int], list[str]] | None = None

    def robot_dir(self, data_root: str) -> str:
        return os.path.join(data_root, self.robot, VERSION)

    def labelled_root(self, out: str, budget: str | None = None) -> str:
        """Where `scripts/demo.py --out OUT --budget B` leaves the labelled demos stage 5 (and scripts/compare.py's
        default --data-root) reads: OUT/data_finetune when the budget has labelled demos of its own (`finetune_data`),
        else the pretraining data's OUT/data. The default budget is the world's first."""
        b = self.budgets[budget or next(iter(self.budgets))]
        return os.path.join(out, "data_finetune" if b.finetune_data else "data")


def _datasets(names: tuple[str, ...]) -> tuple[str, ...]:
    """`--config.data.datasets=(...)` and equal `--config.data.weights=(...)` of a trainer command."""
    return (f"--config.data.datasets=({', '.join(repr(n) for n in names)},)",
            f"--config.data.weights=({', '.join('1.0' for _ in names)},)")


# ------------------------------------------------------------------------------------------------ demo world
def _demo_eval_args(data_root: str) -> list[str]:
    return ["--data", os.path.join(data_root, "demo_robot", VERSION)]


def _demo_seeds(root: str) -> dict[int, str]:
    from data.demo import writer

    return writer.world_seeds(root)


# ------------------------------------------------------------------------------------------------ Meta-World
def generation(data_root: str, dataset: str) -> dict:
    """A Meta-World dataset's generation.json (its GenerationConfig + kind), {} when absent."""
    try:
        with open(os.path.join(data_root, dataset, VERSION, "generation.json")) as f:
            g = json.load(f)
    except (OSError, ValueError):
        return {}
    return g if isinstance(g, dict) else {}


def target_tasks(data_root: str) -> list[str]:
    """The tasks `metaworld_robot` under `data_root` was generated for (`data.metaworld.tasks.generated_tasks`)."""
    from data.metaworld.tasks import generated_tasks

    return generated_tasks(data_root)


def _metaworld_eval_args(data_root: str) -> list[str]:
    return ["--world", "metaworld", "--tasks", ",".join(target_tasks(data_root))]


def _metaworld_eval_seed(eval_seed: int, i: int) -> int:
    from data.metaworld.writer import EVAL_SEED_BASE  # policy/metaworld_eval.py eval_seed (without MuJoCo)

    return EVAL_SEED_BASE + int(eval_seed) + int(i)


def _metaworld_seeds(root: str) -> dict[int, str]:
    """Every world seed the Meta-World datasets under `root` were generated from, recomputed from their
    generation.json (data/metaworld/writer.py episode_seed)."""
    from data.metaworld.writer import DATASET_NAMES, episode_seed

    seeds: dict[int, str] = {}
    for kind, name in DATASET_NAMES.items():
        g = generation(root, name)
        for split, n in (("train", int(g.get("episodes", 0))), ("val", int(g.get("val_episodes", 0)))):
            for i in range(n):
                seeds.setdefault(episode_seed(int(g["seed"]), kind, split, i), f"{name} {split} episode {i}")
    return seeds


def _metaworld_data(root: str, episodes: int, val_episodes: int, seed: int) -> list[str]:
    return [sys.executable, "scripts/make_metaworld_data.py", "--out", root, "--episodes", str(episodes),
            "--val-episodes", str(val_episodes), "--seed", str(seed), "--overwrite", "--quiet"]


_VIDEO = ("metaworld_video",)
WORLDS: dict[str, PipelineWorld] = {
    "demo": PipelineWorld(
        name="demo", title="Demo-world comparison: scratch vs LAPA vs ViPRA vs reference policies",
        robot="demo_robot", pretrain=("demo_robot", "demo_human"), vqgan_args=(), lam_size="demo", lam_args=(),
        vla_args=(), finetune_args=(),
        recipes=("scratch", "lapa", "vipra", "lapa_scratch", "state_bc", "image_bc"),
        # stage 5 fine-tunes and evaluates on the two short families only, as every comparison slice since stop 35
        # (docs/demo_world.md, "Where the comparison stands"): on all five a first run read 0-7 % success for every
        # policy (the long families' progress is 0.05-0.32 at 50 demos even with privileged state)
        budgets={"demo": Budget(episodes=0, val_episodes=0, vqgan_steps=800, lam_steps=0, vla_steps=0,
                                compare_preset="demo",
                                finetune_data={"tasks": ("touch_block", "push_direction"), "embodiments": ("robot",),
                                               "seed": 7, "num_shards": 2})},
        eval_args=_demo_eval_args, eval_world_seed=lambda seed, i: seed + i, data_seeds=_demo_seeds),
    "metaworld": PipelineWorld(
        name="metaworld",
        title="Meta-World transfer: pretraining on source-task video, fine-tuning on target-task demos",
        robot="metaworld_robot", pretrain=_VIDEO,
        vqgan_args=(_datasets(_VIDEO)[0],),
        # configs/lam.py *_metaworld: Farneback flow targets (no ground-truth flow here), clip offset 10 from the hand's
        # motion in pixels; the datasets narrowed to the source-task video
        lam_size="metaworld", lam_args=_datasets(_VIDEO),
        vla_args=(*_datasets(_VIDEO), "--config.text.corpus=metaworld"),
        finetune_args=_datasets(("metaworld_robot",)),
        # policy/reference.py's features and vocabulary are the demo world's
        recipes=("scratch", "lapa", "vipra", "lapa_scratch"),
        # sizes from measured per-stage costs (docs/metaworld.md, "The transfer experiment"): cpu = a few hours of
        # 2-core CPU (LAMs and VideoLLaMA at their demo presets' 3500 / 600 steps); gpu = values for one accelerator
        budgets={"cpu": Budget(episodes=60, val_episodes=6, vqgan_steps=800, lam_steps=0, vla_steps=0,
                               compare_preset="transfer", finetune_steps=400),
                 "gpu": Budget(episodes=300, val_episodes=30, vqgan_steps=5000, lam_steps=20_000,
                               vla_steps=10_000, compare_preset="transfer_gpu", finetune_steps=2000)},
        eval_args=_metaworld_eval_args, eval_world_seed=_metaworld_eval_seed, data_seeds=_metaworld_seeds,
        data_command=_metaworld_data),
}


def get_world(name: str) -> PipelineWorld:
    if name not in WORLDS:
        raise UserError(unknown("world", name, WORLDS))
    return WORLDS[name]
