"""Scratch vs LAPA vs ViPRA on the demo world: the same labelled demos, closed-loop success with 95% CIs.

For each number of demos N and each recipe it runs `python -m policy.finetune` (configs/policy.py presets: scratch =
the ViPRA flow-matching layout from a random init; lapa / vipra = the recipes from their pretrained VideoLLaMA runs),
which also evaluates the policy closed loop; then writes OUT/comparison.md (table) and OUT/success_vs_demos.png.

    python scripts/compare.py --out runs/demo/compare --vla runs/demo/vla --demos 20,100 --episodes 50
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _stages import load_json, run_stage

RECIPES = ("scratch", "lapa", "vipra")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo/compare")
    p.add_argument("--vla", default="runs/demo/vla", help="directory with the pretrained runs lapa/ and vipra/")
    p.add_argument("--data-root", default="runs/demo/data")
    p.add_argument("--demos", default="20,100", help="comma-separated numbers of labelled demos")
    p.add_argument("--episodes", type=int, default=50, help="closed-loop episodes per policy")
    p.add_argument("--steps", type=int, default=0, help="fine-tuning steps (default: the preset's)")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--redo", action="append", default=[], help="rerun one run, e.g. lapa_20")
    p.add_argument("--redo-all", action="store_true", help="rerun every run (e.g. after new pretraining)")
    a = p.parse_args(argv)
    from policy.eval_report import format_table, plot_success_vs_demos

    results = []
    for n in [int(x) for x in a.demos.split(",")]:
        for recipe in a.recipes.split(","):
            wd = os.path.join(a.out, f"{recipe}_{n}")
            cmd = [sys.executable, "-m", "policy.finetune", f"--config=configs/policy.py:{recipe}_demo",
                   f"--workdir={wd}", "--overwrite", f"--config.data.root={a.data_root}",
                   f"--config.policy.num_demos={n}", f"--config.policy.eval_episodes={a.episodes}"]
            if recipe != "scratch":
                cmd.append(f"--config.policy.pretrained={os.path.join(a.vla, recipe)}")
            else:  # the scratch baseline shares the pretrained runs' text and image tokenizers, not their weights
                cmd.append(f"--config.policy.tokenizers_from={os.path.join(a.vla, 'vipra')}")
            if a.steps:
                cmd += [f"--config.train.total_steps={a.steps}",
                        f"--config.train.optimizer.warmup_steps={min(30, a.steps // 10)}"]
            print(f"[{recipe}, {n} demos]", flush=True)
            redo = {f"{recipe}_{n}"} if a.redo_all else set(a.redo)
            run_stage(f"{recipe}_{n}", cmd, a.out, os.path.join(wd, "closed_loop.json"), redo)
            r = load_json(os.path.join(wd, "closed_loop.json"))
            r.update({"name": f"{recipe} ({n} demos)", "recipe": recipe, "demos": n})
            r.pop("records", None)
            results.append(r)
    table = format_table(results)
    with open(os.path.join(a.out, "comparison.md"), "w") as f:
        f.write(table + "\n")
    plot_success_vs_demos(results, os.path.join(a.out, "success_vs_demos.png"))
    print(table)
    print(f"wrote {a.out}/comparison.md and {a.out}/success_vs_demos.png")
    import report

    print("report: {} (also {})".format(*report.write_report(a.out)))
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
