"""The main job on the built-in demo world (what `make demo` runs), each stage a normal training command:

  1. demo RLDS datasets (robot demonstrations + action-free human video)       OUT/data
     and stage 5's labelled demos (the two short task families)                OUT/data_finetune
  2. VQGAN image tokenizer (configs/vqgan.py:demo, shortened)                  OUT/vqgan
  3. latent action models, LAPA and ViPRA presets (configs/lam.py:*_demo)      OUT/lam/{lapa,vipra}
  4. VideoLLaMA latent pretraining (LAPA) and dynamics pretraining +
     flow-matching co-training (ViPRA) (configs/{lapa,vipra}.py:demo)          OUT/vla/{lapa,vipra}
  5. policies fine-tuned on the same labelled demos (scratch, LAPA, ViPRA,
     the state-BC reference) and evaluated closed loop on the same world
     seeds: a reduced scripts/compare.py (one demo count, one seed) in the
     configuration of docs/demo_world.md "Where the comparison stands"         OUT/compare/report.md
The console shows per stage its command, a progress bar (on a terminal) and one line of key figures, then a table
of all stages; third-party noise is kept off (core/quiet.py). Full logs: OUT/logs/<stage>.log. The run report is
OUT/index.html (open it in a browser; the same as OUT/report.md; rebuild with `python scripts/report.py OUT`).
A stage whose outputs exist (same command) is reused; --redo NAME reruns one (a stage of 1-4, or the stage-5 runs
matching a scripts/compare.py --redo pattern; a name that matches nothing is refused).

    python scripts/demo.py --out runs/demo

`--world metaworld` runs the same stages as the Meta-World transfer experiment (issue #24 part 3, docs/metaworld.md):
stage 1 is scripts/make_metaworld_data.py, stages 2-4 read only the source tasks' action-free video
(metaworld_video), stage 5 fine-tunes on demos of the held-out target tasks (metaworld_robot) and evaluates on those
tasks only; what differs per world is a value of scripts/_worlds.py WORLDS, sizes included (`--budget cpu|gpu`).

    python scripts/demo.py --world metaworld --out runs/metaworld
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import machine, quiet
from core.errors import UserError

quiet.apply_env()  # before anything loads TensorFlow, here or in a stage's subprocess

import _stages  # noqa: E402
import _worlds  # noqa: E402
from _stages import StageRecord, record, run_stage  # noqa: E402

from data.demo import report as data_report  # noqa: E402
from data.demo import writer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="run directory (default runs/demo, runs/metaworld)")
    p.add_argument("--world", default="demo", choices=tuple(_worlds.WORLDS), help="demo (make demo) or metaworld "
                   "(the transfer experiment)")
    p.add_argument("--budget", default=None, help="the world's sizes (_worlds.py budgets; metaworld: cpu or gpu)")
    p.add_argument("--episodes", type=int, default=None, help="train episodes per dataset (default: the budget's)")
    p.add_argument("--seed", type=int, default=0, help="data-generation seed")
    p.add_argument("--vqgan-steps", type=int, default=None)
    # stage 5 is scripts/compare.py --preset demo (50 demos, seed 0, 100 episodes, scratch/lapa/vipra/state_bc;
    # fine-tunes with the effector state, augmentation and 1000 steps)
    p.add_argument("--compare-demos", default=None, help="labelled demos for stage 5 (comma-separated)")
    p.add_argument("--compare-episodes", type=int, default=None, help="closed-loop episodes per policy in stage 5")
    p.add_argument("--compare-recipes", default=None,
                   help="stage 5's recipes (scripts/compare.py RECIPES; image_bc adds ~6 CPU-min per demo count)")
    p.add_argument("--data-only", action="store_true", help="stop after generating the datasets")
    p.add_argument("--smoke", type=int, default=0, metavar="STEPS",
                   help="wiring check: every training stage runs only STEPS steps (numbers are meaningless)")
    p.add_argument("--redo", action="append", default=[], help="rerun a stage: data, vqgan, lam_lapa, lam_vipra, "
                   "lam_lapa_eval, lam_vipra_eval, vla_lapa, vla_vipra, or stage 5's runs "
                   "matching a scripts/compare.py --redo pattern (e.g. vipra_50, 'scratch_*')")
    a = p.parse_args(argv)
    world = _worlds.get_world(a.world)
    a.budget = a.budget or next(iter(world.budgets))
    if a.budget not in world.budgets:
        raise UserError(f"--budget {a.budget!r}: the {a.world} world has {', '.join(world.budgets)}")
    b = world.budgets[a.budget]
    a.out = a.out or f"runs/{a.world}"
    a.episodes = a.episodes if a.episodes is not None else b.episodes or writer.GenerationConfig.episodes
    a.vqgan_steps = a.vqgan_steps if a.vqgan_steps is not None else b.vqgan_steps
    start = machine.snapshot()
    try:
        return run_all(a)
    finally:
        finish(a.out, start, argv if argv is not None else sys.argv[1:])


def run_all(a: argparse.Namespace) -> int:
    """Stages 1-5 (each reused when its outputs exist and were made by the same command)."""
    out, py = a.out, sys.executable
    world = _worlds.get_world(a.world)
    stages = {"data", *STAGES}
    redo = {name for name in a.redo if name in stages}
    compare_redo = [x for name in a.redo if name not in stages for x in ("--redo", name)]  # checked by compare.py
    budget = world.budgets[a.budget]
    short = ([f"--config.train.total_steps={a.smoke}", f"--config.train.optimizer.warmup_steps={a.smoke // 10}"]
             if a.smoke else [])
    if a.smoke:
        a.vqgan_steps, a.compare_demos, a.compare_episodes = a.smoke, "4", 2
    data_dir, labelled = os.path.join(out, "data"), world.labelled_root(out, a.budget)
    if world.data_command is None:  # the demo world, in-process: its figures table goes to logs/data.log
        sets = [(data_dir, writer.GenerationConfig(episodes=a.episodes, seed=a.seed))]
        if budget.finetune_data:  # stage 5's labelled demos as a dataset of their own
            sets.append((labelled, finetune_generation(sets[0][1], budget.finetune_data)))
        generate_data(sets, out, force="data" in redo)
    elif generate_world_data(world, data_dir, a, out, redo):
        redo |= {"vqgan", "lam_lapa", "lam_vipra", "vla_lapa", "vla_vipra"}
    if a.data_only:
        return 0
    vq = os.path.join(out, "vqgan")
    print("[2/5] VQGAN image tokenizer", flush=True)
    if run_stage("vqgan", [py, "-m", "latent_pretraining.vqgan_train", "--config=configs/vqgan.py:demo",
                        f"--workdir={vq}", "--overwrite", f"--config.data.root={data_dir}",
                        f"--config.train.total_steps={a.vqgan_steps}",
                        f"--config.train.optimizer.warmup_steps={min(50, a.vqgan_steps // 10)}", *world.vqgan_args],
                  out, os.path.join(vq, "eval.json"), redo):
        redo |= {"vla_lapa", "vla_vipra"}  # downstream stages depend on the tokenizer
    print("[3/5] latent action models", flush=True)
    for fam in ("lapa", "vipra"):
        wd = os.path.join(out, "lam", fam)
        preset = f"{fam}_{world.lam_size}"
        ran = run_stage(f"lam_{fam}", [py, "-m", "lam.train", f"--config=configs/lam.py:{preset}", f"--workdir={wd}",
                                 "--overwrite", f"--config.data.root={data_dir}",
                                 f"--config.data.cache_dir={os.path.join(out, 'lam', 'cache')}", *world.lam_args,
                                 *(short or _steps(budget.lam_steps))],
                  out, os.path.join(wd, "checkpoints"), redo)
        run_stage(f"lam_{fam}_eval", [py, "-m", "lam.evaluate", f"--workdir={wd}"], out,
                  os.path.join(wd, "eval", "metrics.json"), redo | ({f"lam_{fam}_eval"} if ran else set()))
        if ran:
            redo.add(f"vla_{fam}")
    print("[4/5] VideoLLaMA pretraining / co-training", flush=True)
    upstream = False
    for recipe in ("lapa", "vipra"):
        wd = os.path.join(out, "vla", recipe)
        cmd = [py, "-m", "latent_pretraining.train", f"--config=configs/{recipe}.py:demo", f"--workdir={wd}",
               "--overwrite", f"--config.data.root={data_dir}",
               f"--config.vision.tokenizer={os.path.join(vq, 'tokenizer.safetensors')}",
               f"--config.latent.lam_workdir={os.path.join(out, 'lam', recipe)}",
               f"--config.text.tokenizer={os.path.join(out, 'text_tokenizer.model')}", *world.vla_args,
               *(short or _steps(budget.vla_steps))]
        upstream |= run_stage(f"vla_{recipe}", cmd, out, os.path.join(wd, "summary.json"), redo)
    print("[5/5] policies on the same labelled demos and world seeds (a reduced scripts/compare.py)", flush=True)
    import compare

    given = (("--demos", a.compare_demos), ("--episodes", a.compare_episodes), ("--recipes", a.compare_recipes),
             ("--seeds", "0" if a.smoke else None))  # a smoke run: one fine-tuning seed whatever the grid has
    steps = a.smoke or budget.finetune_steps
    compare.main(["--world", world.name, "--preset", budget.compare_preset, "--out", os.path.join(out, "compare"),
                  "--vla", os.path.join(out, "vla"), "--data-root", labelled,
                  *(x for flag, v in given if v is not None for x in (flag, str(v)))]
                 + (["--steps", str(steps)] if steps else []) + (["--ref-steps", str(a.smoke)] if a.smoke else [])
                 + (["--redo-all"] if upstream else compare_redo))
    return 0


STAGES = ("vqgan", "lam_lapa", "lam_vipra", "lam_lapa_eval", "lam_vipra_eval", "vla_lapa", "vla_vipra")  # 2-4


def _steps(n: int) -> list[str]:
    """A budget's step count as a trainer override (0: the preset's own)."""
    return [f"--config.train.total_steps={n}"] if n else []


def generate_world_data(world: _worlds.PipelineWorld, data_dir: str, a: argparse.Namespace, out: str,
                        redo: set[str]) -> bool:
    """Stage 1 for a world with its own generator script (Meta-World): a normal stage, reused when made by the same
    command; returns whether it ran. --smoke: 6 train + 6 val episodes per dataset (one per task)."""
    print(f"[1/5] {world.name} datasets in {data_dir}", flush=True)
    episodes, val = (6, 6) if a.smoke else (a.episodes, world.budgets[a.budget].val_episodes)
    cmd = world.data_command(data_dir, episodes, val, a.seed)
    # the action-free dataset is written last: its generation.json means both are complete
    return run_stage("data", cmd, out, os.path.join(data_dir, world.pretrain[-1], _worlds.VERSION, "generation.json"),
                     redo)


def finetune_generation(cfg: writer.GenerationConfig, values: dict) -> writer.GenerationConfig:
    """Stage 5's labelled demos: the budget's `finetune_data` over stage 1's config, its seed an offset of --seed
    (so a different --seed redraws both and the two never share a generation seed by default)."""
    return dataclasses.replace(cfg, **{**values, "seed": cfg.seed + int(values.get("seed", 0))})


def generate_data(sets: list[tuple[str, writer.GenerationConfig]], out: str, force: bool = False) -> None:
    """Stage 1 (in this process): the demo datasets, each (directory, config) reused when generated with the same
    config unless `force` (--redo data); the first is the pretraining data, a second one stage 5's labelled demos.
    The console gets one line of figures; the per-dataset table goes to OUT/logs/data.log."""
    logs = os.path.join(out, "logs")
    t0 = time.time()
    reused = [None if force else writer.existing_summaries(d, cfg) for d, cfg in sets]
    data_dir = sets[0][0]
    if any(r is None for r in reused):  # name only what is written: a reused dataset stays as it is
        todo = [d + ("" if i == 0 else " (" + ", ".join(c.tasks) + ")")
                for i, ((d, c), r) in enumerate(zip(sets, reused, strict=True)) if r is None]
        print(f"[1/5] demo datasets: generating {sets[0][1].episodes} episodes per embodiment in {' and '.join(todo)}",
              flush=True)
        from data import tf_setup  # noqa: F401  (TensorFlow / TFDS loaded quietly: no TFDS bars, no notices)

        reused = [r if r is not None else writer.write_datasets(d, c, overwrite=True, progress=sys.stderr.isatty())
                  for r, (d, c) in zip(reused, sets, strict=True)]
        ran = True
    else:
        print(f"[1/5] demo datasets: reusing {', '.join(d for d, _ in sets)} (same generation config)", flush=True)
        ran = False
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, "data.log"), "w") as f:
        f.write(data_report.format_summaries([s for r in reused for s in r]) + "\n")
    line = data_figures(reused[0]) + "".join(f"; stage 5's demos ({', '.join(c.tasks)}) "
                                             + data_figures(r) for r, (_, c) in zip(reused[1:], sets[1:], strict=True))
    seconds = time.time() - t0 if ran else float((_stages._read_record(logs, "data") or {}).get("seconds", 0.0))
    record(StageRecord("data", "ran" if ran else "reused", seconds, line, data_dir), logs)
    print(f"  data {f'done in {seconds:.0f} s' if ran else 'reused'}: {line}", flush=True)


def data_figures(summaries: list[dict]) -> str:
    """'robot 170 ep / 9000 steps (expert 97%), human 170 ep / 9500 steps (expert 100%)' (train + val episodes)"""
    return ", ".join(f"{s['dataset'].split('/')[0].removeprefix('demo_')} {s['episodes']} ep / {s['steps']} steps "
                     f"(expert {100 * s['success_rate']:.0f}%)" for s in summaries)


def finish(out: str, start: dict, argv: list[str]) -> None:
    """The summary table of every stage, OUT/logs/run.json (arguments, total time, machine and load at start and
    end: what `scripts/readme_results.py` quotes) and the run report (OUT/index.html, OUT/report.md); also after a
    failed stage, so a partial run still gets all three. Nothing when no stage got as far as starting."""
    if not _stages.STAGES:
        return
    import report

    seconds = max(0.0, time.time() - start["time"])
    run = {"argv": argv, "seconds": round(seconds, 1), "revision": machine.git_revision(ROOT),
           "stages": [dataclasses.asdict(s) for s in _stages.STAGES], "start": start, "end": machine.snapshot()}
    with open(os.path.join(out, "logs", "run.json"), "w") as f:
        json.dump(run, f, indent=1)
    print(f"\ndemo finished in {seconds:.0f} s\n" + _stages.summary_table(), flush=True)
    try:
        html, md = report.write_report(out)
    except OSError as e:  # the run's own error (if any) is the one to report
        print(f"run report not written: {e}", file=sys.stderr)
        return
    print(f"report: {html} (also {md}); full logs: {os.path.join(out, 'logs')}/; "
          f"TensorBoard: tensorboard --logdir {out}", flush=True)


if __name__ == "__main__":
    from core import cli

    cli.run(main)
