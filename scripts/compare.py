"""The demo-world comparison (issue #20 part 3): scratch vs LAPA vs ViPRA vs the reference policies, on the same
first-N labelled demos, paired closed-loop evaluation on the same world seeds, intervals on every figure.

    python scripts/compare.py --out runs/compare --vla robot+human=runs/demo/vla --vla robot=runs/demo/vla_robot
        # --preset full, the default: the measured grid (demos 10,25,50,100, seeds 0,1,2, 300 episodes, 1000 steps,
        # effector state, augmentation, DrQ shift) on runs/demo/data_finetune, the labelled demos make demo writes
    python scripts/compare.py --preset demo --out runs/demo/compare --vla runs/demo/vla   # make demo's stage 5

Per (recipe, pretraining variant, N demos, fine-tuning seed) one run directory OUT/<recipe>[-<variant>]_<N>_s<seed>
(OUT/<recipe>[-<variant>]@p<K>_<N>_s<seed> for the K+1-th pretraining run of a variant that has several):
a fine-tune (`policy.finetune` with train.seed = the seed and no closed-loop evaluation of its own, or
`policy.reference` for the reference policies), then `policy.evaluate --seed EVAL --episodes E --data <the robot
dataset>` into test.json, so every policy plays the same world seeds. The evaluation range must be disjoint from
every world seed the datasets were generated from (the data root's and the pretrained runs'): checked first.

Recipes (RECIPES): scratch (the ViPRA layout, flow matching, random init, the text/image tokenizers of the first
variant's ViPRA run), lapa_scratch (the LAPA layout, action bins from frame t, random init, the LAPA run's
tokenizers: the control that separates LAPA's pretraining from its fine-tuning layout), lapa and vipra
(fine-tuned from <vla dir>/lapa and /vipra of each `--vla NAME=DIR` pretraining variant; one plain `--vla DIR` is a
single unnamed variant), state_bc and image_bc (`python -m policy.reference --kind state|image`). A variant may
name several pretraining runs of the same recipe with other seeds, `--vla NAME=DIR1,DIR2`: every fine-tuning seed
then runs from each, and the report's seed-resampling intervals draw the pretraining runs too.
Resumable: a run whose output exists, is valid and was made by the same command (the Python interpreter's path
aside) is reused; a killed or partial one is redone, with one line saying why (a redone
fine-tune also redoes its evaluation); `--redo PATTERN` (e.g. `lapa_20` for all its seeds, `'vipra-robot_*'`) and
`--redo-all` force reruns. OUT/manifest.json and OUT/commands.sh list every
command. After each run that ran, one line estimates the time left (`eta`). At the end: OUT/report.md
(policy/compare_report.py), OUT/comparison.md, the plots, and OUT/index.html.
Docs: docs/demo_world.md, section "The comparison".

`--world metaworld` is the same comparison in Meta-World (the transfer experiment, docs/metaworld.md): fine-tunes
read `metaworld_robot` (the held-out target tasks), every policy is evaluated on exactly the tasks that dataset was
generated for (`policy.evaluate --world metaworld --tasks ...`), on world seeds 2^31 + EVAL_SEED + i. What differs
per world is a value of scripts/_worlds.py WORLDS.

    python scripts/compare.py --world metaworld --preset transfer --out runs/metaworld/compare \
        --data-root runs/metaworld/data --vla runs/metaworld/vla
"""

import argparse
import dataclasses
import datetime
import fnmatch
import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from time import monotonic as clock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _worlds
from _stages import Runner, display_command, run_stage

from core.errors import UserError
from policy import compare_cost, compare_report
from policy.compare_report import read_json_object


@dataclasses.dataclass(frozen=True)
class Recipe:
    kind: str  # "finetune" (python -m policy.finetune) | "reference" (python -m policy.reference)
    preset: str  # the configs/policy.py preset, or the reference kind
    pretrained: bool  # fine-tuned from each pretraining variant's run <vla dir>/<recipe>
    tokenizers: str = "vipra"  # unpretrained fine-tunes: whose text tokenizer and VQGAN (<first vla dir>/<this>)


# scratch is the ViPRA layout (frames t-2, t -> a flow chunk) from a random init; lapa_scratch the LAPA layout (frame
# t -> one step of action bins) from a random init: LAPA minus lapa_scratch is its pretraining's effect alone
RECIPES = {"scratch": Recipe("finetune", "scratch_demo", False), "lapa": Recipe("finetune", "lapa_demo", True),
           "vipra": Recipe("finetune", "vipra_demo", True),
           "lapa_scratch": Recipe("finetune", "lapa_demo", False, tokenizers="lapa"),
           "state_bc": Recipe("reference", "state", False), "image_bc": Recipe("reference", "image", False)}
# grid presets (--preset); an explicit --demos / --seeds / --episodes / --recipes / --steps wins, and an explicit
# --finetune-arg / --ref-arg comes after the preset's (the later value of a flag wins). MEASURED is the fine-tuning
# configuration of every comparison slice since stop 35 (docs/demo_world.md, "Where the comparison stands"): 1000
# steps, the effector state, augmentation, and DrQ's 4-pixel shift for the references (the state BC ignores it).
# "full" is the grid those slices measured; "demo" is make demo's stage 5: one demo count, one seed, 100 episodes (an
# evaluation is a few % of a 1000-step fine-tune's time; 30 episodes left a 5-95 % spread of 0.09-0.30 in one
# policy's progress, 100 of 0.15-0.25), of the references the seconds-cheap state BC.
# "transfer" / "transfer_gpu": the Meta-World transfer experiment's grids (its cpu / gpu budgets in _worlds.py):
# demo counts are multiples of the 6 target tasks (metaworld_robot episode i plays task i mod 6), so N demos are N/6
# per task; evaluation episodes likewise cycle through the tasks (docs/metaworld.md, "The transfer experiment")
MEASURED = {"steps": 1000, "finetune_arg": ["--config.model.proprio_dim=2", "--config.data.augment.enabled=True"],
            "ref_arg": ["--shift=4"]}
GRIDS = {"full": {"demos": "10,25,50,100", "seeds": "0,1,2", "episodes": 300, "recipes": ",".join(RECIPES),
                  **MEASURED},
         "demo": {"demos": "50", "seeds": "0", "episodes": 100, "recipes": "scratch,lapa,vipra,state_bc", **MEASURED},
         "transfer": {"demos": "30,60", "seeds": "0,1", "episodes": 60, "recipes": "scratch,lapa,vipra"},
         "transfer_gpu": {"demos": "30,60,150", "seeds": "0,1,2", "episodes": 120, "recipes": "scratch,lapa,vipra"}}
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.]*")


@dataclasses.dataclass(frozen=True)
class Job:
    """One policy of the grid: its fine-tune (or reference training) and its evaluation."""

    name: str
    recipe: str
    variant: str
    demos: int
    seed: int
    workdir: str
    train: list[str]
    train_done: str
    evaluate: list[str]
    eval_done: str
    pretrain: int = 0  # which of the variant's pretraining runs (its --vla DIRs, in order)


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 10,25,50") from None
    if not vals or len(set(vals)) != len(vals):
        raise UserError(f"{flag} {text!r}: expected distinct comma-separated integers")
    return vals


def parse_variants(values: list[str] | None) -> dict[str, list[str]]:
    """`--vla` values -> {variant name: its pretrained-runs dirs}: one plain DIR is the unnamed variant ""; several
    need NAME=DIR each (NAME: letters, digits, _ + .). DIR may be DIR1,DIR2,...: the variant's pretraining runs (the
    same recipe and data, other seeds), each fine-tuned with every seed."""
    values = values or ["runs/demo/vla"]

    def dirs(v: str, text: str) -> list[str]:
        out = text.split(",")
        if not all(out) or len(set(out)) != len(out):
            raise UserError(f"--vla {v!r}: expected [NAME=]DIR or [NAME=]DIR1,DIR2,... with distinct, non-empty "
                            "dirs (one per pretraining run)")
        return out

    if len(values) == 1 and "=" not in values[0]:
        return {"": dirs(values[0], values[0])}
    out: dict[str, list[str]] = {}
    for v in values:
        name, eq, path = v.partition("=")
        if not eq or not VARIANT_NAME.fullmatch(name) or not path or name in out:
            raise UserError(f"--vla {v!r}: with several pretraining variants each must be NAME=DIR with a distinct "
                            "NAME of letters, digits, '_', '+', '.' (e.g. robot+human=runs/demo/vla)")
        out[name] = dirs(v, path)
    return out


def check_eval_seeds(roots: list[str], eval_seed: int, episodes: int, world: str = "demo") -> int:
    """Refuses (one line) an evaluation range (episode i plays the world's `eval_world_seed(eval_seed, i)`) holding a
    world seed any dataset under `roots` was generated from; returns how many data-generation seeds were checked."""
    w = _worlds.get_world(world)
    seeds: dict[int, str] = {}
    for root in dict.fromkeys(roots):
        seeds.update(w.data_seeds(root))
    played = [w.eval_world_seed(eval_seed, i) for i in range(episodes)]
    clash = [s for s in played if s in seeds]
    if clash:
        raise UserError(f"evaluation world seeds {played[0]}-{played[-1]} (--eval-seed, --episodes) "
                        f"include {len(clash)} data-generation seed(s), e.g. {clash[0]} ({seeds[clash[0]]}): choose "
                        "an --eval-seed whose range avoids every training episode's world seed")
    return len(seeds)


def plan(a: argparse.Namespace, variants: dict[str, list[str]]) -> list[Job]:
    """Every job of the grid, seed-major (a partial comparison has whole grids of the first seeds)."""
    py, world = sys.executable, _worlds.get_world(a.world)
    where = world.eval_args(a.data_root)  # the evaluated world: the demos' world config, or Meta-World's target tasks
    jobs = []
    for seed in a.seeds:
        for n in a.demos:
            for recipe in a.recipes:
                r = RECIPES[recipe]
                for variant, k in ([(v, k) for v, ds in variants.items() for k in range(len(ds))] if r.pretrained
                                   else [("", 0)]):
                    name = f"{recipe}{'-' + variant if variant else ''}{f'@p{k}' if k else ''}_{n}_s{seed}"
                    wd = os.path.join(a.out, name)
                    if r.kind == "reference":
                        train = [py, "-m", "policy.reference", "--kind", r.preset, "--data-root", a.data_root,
                                 "--num-demos", str(n), "--workdir", wd, "--overwrite", "--seed", str(seed),
                                 "--no-progress",
                                 *(["--steps", str(a.ref_steps)] if a.ref_steps else []), *a.ref_arg]
                        done = os.path.join(wd, "reference.json")
                    else:
                        train = [py, "-m", "policy.finetune", f"--config=configs/policy.py:{r.preset}",
                                 f"--workdir={wd}", "--overwrite", f"--config.data.root={a.data_root}",
                                 f"--config.policy.num_demos={n}", "--config.policy.eval_episodes=0",
                                 f"--config.train.seed={seed}"]
                        if r.pretrained:
                            train.append(f"--config.policy.pretrained={os.path.join(variants[variant][k], recipe)}")
                        else:  # scratch, lapa_scratch: a pretrained run's text and image tokenizers, not its weights
                            first = next(iter(variants.values()))[0]
                            train.append(f"--config.policy.tokenizers_from={os.path.join(first, r.tokenizers)}")
                        if a.steps:
                            train += [f"--config.train.total_steps={a.steps}",
                                      f"--config.train.optimizer.warmup_steps={min(30, a.steps // 10)}"]
                        train += [*world.finetune_args, *a.finetune_arg]
                        done = os.path.join(wd, "summary.json")
                    test = os.path.join(wd, "test.json")
                    evaluate = [py, "-m", "policy.evaluate", "--checkpoint", wd, "--episodes", str(a.episodes),
                                "--seed", str(a.eval_seed), *where, "--no-progress", "--gif-dir",
                                os.path.join(wd, "rollouts"), "--gif-episodes", str(a.gif_episodes), "--out", test]
                    jobs.append(Job(name, recipe, variant, n, seed, wd, train, done, evaluate, test, k))
    return jobs


# ----------------------------------------------------------------------------------------------- validity
def trained(done: str) -> bool:
    """A finished fine-tune (summary.json with its steps, checkpoints/) or reference training (reference.json with
    its curve, params.msgpack): what a killed run lacks."""
    d, wd = read_json_object(done), os.path.dirname(done)
    if os.path.basename(done) == "reference.json":
        params = os.path.join(wd, "params.msgpack")
        return bool(d.get("curve")) and os.path.isfile(params) and os.path.getsize(params) > 0
    return int(d.get("steps") or 0) >= 1 and os.path.isdir(os.path.join(wd, "checkpoints"))


def evaluated(episodes: int, eval_seed: int, world: str = "demo"):
    """Validity of a test.json: complete, with exactly the grid's episodes and world seeds."""
    w = _worlds.get_world(world)
    want = [w.eval_world_seed(eval_seed, i) for i in range(episodes)]

    def check(done: str) -> bool:
        d = read_json_object(done)
        recs = d.get("records")
        return (d.get("episodes") == episodes and d.get("settings", {}).get("seed") == eval_seed
                and isinstance(recs, list) and [r.get("seed") for r in recs] == want)
    return check


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + "_s") for p in patterns)


def run_jobs(jobs: list[Job], out: str, *, redo: list[str], redo_all: bool, episodes: int, eval_seed: int,
             runner: Runner | None = None, world: str = "demo") -> None:
    """Runs what is not already done (see the module docstring); `runner` replaces the subprocess runner in tests."""
    ok, took = evaluated(episodes, eval_seed, world), {}
    before = recorded_times(jobs, out)  # earlier sessions' runs of this grid cost a recipe this run has not run yet
    for i, j in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {compare_report.label(j.recipe, j.variant)}, {j.demos} demos, "
              f"fine-tuning seed {j.seed}{f' from pretraining run {j.pretrain + 1}' if j.pretrain else ''}", flush=True)
        test = j.name + ".test"
        force = {j.name, test} if redo_all or _matches(j.name, redo) else ({test} if _matches(test, redo) else set())
        start = clock()
        ran = run_stage(j.name, j.train, out, j.train_done, force, valid=trained, runner=runner)
        ran |= run_stage(test, j.evaluate, out, j.eval_done, force | ({test} if ran else set()), valid=ok,
                         runner=runner)
        if ran:
            took.setdefault(j.recipe, []).append(clock() - start)
            left = eta(jobs[i:], {**before, **took},
                       lambda k: _matches(k.name, redo) or redo_all or not ok(k.eval_done))
            if left:
                print(f"  ~ {left}", flush=True)


def eta(rest: list[Job], took: dict[str, list[float]], pending: Callable[[Job], bool],
        basis: str = "mean per recipe: this run's, else recorded") -> str:
    """"about H:MM:SS left for N runs" for the jobs of `rest` still to run, each costed at the mean of `took`'s wall
    times for its recipe (this invocation's runs, else the recorded ones of `recorded_times`; all recipes' mean for a
    recipe with none); "" when nothing is left.

    Example: eta(jobs, {"scratch": [600.0]}, lambda j: True) with two scratch jobs left -> "about 0:20:00 left for
    2 runs (mean per recipe: this run's, else recorded)"."""
    todo = [j for j in rest if pending(j)]
    if not todo or not took:
        return ""
    every = [t for ts in took.values() for t in ts]
    secs = sum(sum(took.get(j.recipe, every)) / len(took.get(j.recipe, every)) for j in todo)
    return (f"about {datetime.timedelta(seconds=round(secs))} left for {len(todo)} run{'s' * (len(todo) > 1)} "
            f"({basis})")


def recorded_times(jobs: list[Job], out: str) -> dict[str, list[float]]:
    """Per recipe, the wall seconds (training + evaluation) each finished job took when it ran, from the stage
    records in OUT/logs (compare_cost.stage_time); jobs without both records are left out."""
    logs, took = os.path.join(out, "logs"), {}
    for j in jobs:
        t = [compare_cost.stage_time(logs, n) for n in (j.name, j.name + ".test")]
        if all(x is not None for x in t):
            took.setdefault(j.recipe, []).append(sum(x.wall for x in t))
    return took


def finished_runs(jobs: list[Job], episodes: int, eval_seed: int, world: str = "demo") -> list:
    """compare_report.Run of every job whose evaluation is complete (GIF paths made absolute)."""
    ok, runs = evaluated(episodes, eval_seed, world), []
    for j in jobs:
        if ok(j.eval_done):
            res = read_json_object(j.eval_done)
            res["gifs"] = [g if os.path.isfile(g) else os.path.join(j.workdir, "rollouts", os.path.basename(g))
                           for g in res.get("gifs", [])]
            res["gifs"] = [os.path.abspath(g) for g in res["gifs"]]
            runs.append(compare_report.Run.from_result(res, recipe=j.recipe, variant=j.variant, demos=j.demos,
                                                       seed=j.seed, name=j.name, pretrain=j.pretrain))
    return runs


def write_manifest(out: str, jobs: list[Job], setup: dict, variants: dict[str, list[str]]) -> list[str]:
    """OUT/manifest.json (every job's exact argv) and OUT/commands.sh (the same, runnable); returns the lines."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"kind": "comparison", "setup": setup, "variants": variants,
                   "jobs": [dataclasses.asdict(j) for j in jobs]}, f, indent=1)
    lines = [shlex.join(["python" if c[0] == sys.executable else c[0], *c[1:]]) for j in jobs
             for c in (j.train, j.evaluate)]
    with open(os.path.join(out, "commands.sh"), "w") as f:
        f.write("#!/bin/sh\n# every run of this comparison, in order (python = the project's .venv/bin/python)\n"
                "set -e\n" + "\n".join(lines) + "\n")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with the --preset grid's defaults filled in; demos, seeds and recipes as lists."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo/compare")
    p.add_argument("--world", default="demo", choices=tuple(_worlds.WORLDS),
                   help="demo, or metaworld (the transfer experiment: target-task demos, target-task evaluation)")
    p.add_argument("--vla", action="append", default=None, metavar="[NAME=]DIR",
                   help="pretrained runs DIR/lapa and DIR/vipra; repeat as NAME=DIR per pretraining variant; "
                        "DIR1,DIR2 for several pretraining runs of one variant (default runs/demo/vla)")
    p.add_argument("--data-root", default=None, help="the labelled demos' data root (default: where make demo "
                   "leaves them, runs/demo/data_finetune; runs/metaworld/data)")
    p.add_argument("--preset", default="full", choices=tuple(GRIDS),
                   help="grid defaults (GRIDS): full, demo; transfer, transfer_gpu (Meta-World)")
    p.add_argument("--recipes", default=None, help=f"comma-separated, of {', '.join(RECIPES)} (default: all)")
    p.add_argument("--demos", default=None, help="numbers of labelled demos, the first N train episodes "
                                                 "(full: 10,25,50,100)")
    p.add_argument("--seeds", default=None, help="fine-tuning seeds: train.seed, policy.reference --seed "
                                                 "(full: 0,1,2)")
    p.add_argument("--episodes", type=int, default=None, help="closed-loop episodes per policy (full: 300)")
    p.add_argument("--eval-seed", type=int, default=1000, help="episode i plays world seed EVAL_SEED + i")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the grid's, else the "
                                                             "configs/policy.py preset's)")
    p.add_argument("--ref-steps", type=int, default=0, help="reference-policy steps (default: policy.reference's)")
    p.add_argument("--finetune-arg", action="append", default=[], metavar="--config.X=V",
                   help="extra policy.finetune flag for every VLA fine-tune (repeatable; use the = form)")
    p.add_argument("--ref-arg", action="append", default=[], metavar="--FLAG=V",
                   help="extra policy.reference flag for every reference policy (repeatable; use the = form)")
    p.add_argument("--gif-episodes", type=int, default=2, help="rollout GIFs per policy (its first episodes)")
    p.add_argument("--redo", action="append", default=[], help="rerun runs matching this pattern, e.g. lapa_20")
    p.add_argument("--redo-all", action="store_true", help="rerun every run (e.g. after new pretraining)")
    p.add_argument("--report-only", action="store_true", help="run nothing: report on the finished runs")
    a = p.parse_args(argv)
    for k, v in GRIDS[a.preset].items():
        given = getattr(a, k)
        setattr(a, k, [*v, *given] if isinstance(v, list) else v if given is None else given)
    a.steps = a.steps or 0
    a.data_root = a.data_root or _worlds.get_world(a.world).labelled_root(os.path.join("runs", a.world))
    a.demos, a.seeds = _ints(a.demos, "--demos"), _ints(a.seeds, "--seeds")
    a.recipes = [r for r in a.recipes.split(",") if r]
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    world = _worlds.get_world(a.world)
    for r in a.recipes:
        if r not in RECIPES:
            from core.errors import unknown

            raise UserError(unknown("recipe", r, RECIPES))
        if r not in world.recipes:
            raise UserError(f"recipe {r!r} does not run in the {a.world} world: expected some of "
                            f"{', '.join(world.recipes)}")
    if a.episodes < 1 or a.eval_seed < 0 or a.gif_episodes < 0 or min(a.demos) < 1:
        raise UserError("--episodes and every --demos must be >= 1, --eval-seed and --gif-episodes >= 0")
    variants = parse_variants(a.vla)
    pre = {v: {f"{r}{f' (run {k + 1})' if k else ''}": compare_report.pretrained_info(os.path.join(d, r))
               for r in a.recipes if RECIPES[r].pretrained for k, d in enumerate(ds)} for v, ds in variants.items()}
    robot = world.robot_dir(a.data_root)
    gen = read_json_object(os.path.join(robot, "generation.json"))
    if not gen:
        raise UserError(f"--data-root {a.data_root!r}: no {world.robot} dataset (expected the datasets of "
                        f"scripts/demo.py --world {a.world} --data-only, in its OUT/data)")
    if max(a.demos) > int(gen["episodes"]):
        raise UserError(f"--demos {max(a.demos)}: {robot} has {gen['episodes']} train episodes")
    roots = [a.data_root] + [r for v in pre.values() for i in v.values() for r in i.get("data_roots", [])]
    setup = {"demos": a.demos, "seeds": a.seeds, "episodes": a.episodes, "eval_seed": a.eval_seed,
             "data_root": a.data_root, "data_seeds": check_eval_seeds(roots, a.eval_seed, a.episodes, a.world),
             "world": a.world, "title": world.title,
             "eval_world_seeds": [world.eval_world_seed(a.eval_seed, 0), world.eval_world_seed(a.eval_seed,
                                                                                                a.episodes - 1)],
             "recipes": a.recipes, "command": display_command([sys.executable, "scripts/compare.py",
                                                               *(argv if argv is not None else sys.argv[1:])])}
    if not a.report_only:
        missing = [i["run"] for v in pre.values() for i in v.values() if i.get("missing")]
        for r in a.recipes:  # unpretrained fine-tunes take their tokenizers from the first variant's run
            if RECIPES[r].kind == "finetune" and not RECIPES[r].pretrained:
                tok = os.path.join(next(iter(variants.values()))[0], RECIPES[r].tokenizers)
                missing += [tok] if compare_report.pretrained_info(tok).get("missing") else []
        if missing:
            raise UserError(f"pretrained run {missing[0]} has no checkpoint: train it first (docs/demo_world.md, "
                            "'The comparison'), or leave its recipe out of --recipes")
    jobs = plan(a, variants)
    names = [n for j in jobs for n in (j.name, j.name + ".test")]
    for pattern in a.redo:  # a pattern that names no run would rerun nothing, silently
        if not any(_matches(n, [pattern]) for n in names):
            raise UserError(f"--redo {pattern!r} matches no run of this grid (runs: "
                            f"{', '.join(j.name for j in jobs[:12])}{', ...' if len(jobs) > 12 else ''})")
    commands = write_manifest(a.out, jobs, setup, variants)
    if not a.report_only:
        run_jobs(jobs, a.out, redo=a.redo, redo_all=a.redo_all, episodes=a.episodes, eval_seed=a.eval_seed,
                 world=a.world)
    runs = finished_runs(jobs, a.episodes, a.eval_seed, a.world)
    finished = {r.name for r in runs}
    setup["left"] = eta(jobs, recorded_times(jobs, a.out), lambda j: j.name not in finished,
                        "at the recorded mean per recipe")
    paths = compare_report.write_report(a.out, runs, recipes=a.recipes, variants=list(variants), setup=setup,
                                        pretrained=pre, commands=commands)
    with open(paths[1]) as f:
        print(f.read())
    import report

    html, _ = report.write_report(a.out)
    print(f"comparison: {len(runs)} of {len(jobs)} policies evaluated; report {paths[0]} (plots "
          f"{', '.join(os.path.basename(x) for x in paths[2:])}), page {html}"
          + (f"; {setup['left']}" if setup["left"] else ""))
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
