"""The main job on the built-in demo world (what `make demo` runs), each stage a normal training command:

  1. demo RLDS datasets (robot demonstrations + action-free human video)      OUT/data
  2. VQGAN image tokenizer (configs/vqgan.py:demo, shortened)                  OUT/vqgan
  3. latent action models, LAPA and ViPRA presets (configs/lam.py:*_demo)      OUT/lam/{lapa,vipra}
  4. VideoLLaMA latent pretraining (LAPA) and dynamics pretraining +
     flow-matching co-training (ViPRA) (configs/{lapa,vipra}.py:demo)          OUT/vla/{lapa,vipra}
  5. policies fine-tuned on the same labelled demos (scratch, LAPA, ViPRA;
     configs/policy.py) and evaluated closed loop (scripts/compare.py)          OUT/compare
and prints the figures of every stage. A stage whose outputs exist (same command) is reused; --redo NAME reruns
one. Full logs: OUT/logs/<stage>.log.

    python scripts/demo.py --out runs/demo
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _stages import load_json, run_stage

from data.demo import report, writer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--episodes", type=int, default=writer.GenerationConfig.episodes)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vqgan-steps", type=int, default=800)
    p.add_argument("--compare-demos", default="50", help="labelled demos for stage 5 (comma-separated)")
    p.add_argument("--compare-episodes", type=int, default=30, help="closed-loop episodes per policy in stage 5")
    p.add_argument("--data-only", action="store_true", help="stop after generating the datasets")
    p.add_argument("--smoke", type=int, default=0, metavar="STEPS",
                   help="wiring check: every training stage runs only STEPS steps (numbers are meaningless)")
    p.add_argument("--redo", action="append", default=[], help="rerun a stage: vqgan, lam_lapa, lam_vipra, "
                   "vla_lapa, vla_vipra")
    a = p.parse_args(argv)
    start, out, py, redo = time.time(), a.out, sys.executable, set(a.redo)
    short = ([f"--config.train.total_steps={a.smoke}", f"--config.train.optimizer.warmup_steps={a.smoke // 10}"]
             if a.smoke else [])
    if a.smoke:
        a.vqgan_steps, a.compare_demos, a.compare_episodes = a.smoke, "4", 2
    data_dir = os.path.join(out, "data")
    cfg = writer.GenerationConfig(episodes=a.episodes, seed=a.seed)
    reused = writer.existing_summaries(data_dir, cfg)
    if reused is None:
        print(f"[1/5] generating demo datasets in {data_dir} ...", flush=True)
        summaries = writer.write_datasets(data_dir, cfg, overwrite=True)
    else:
        print(f"[1/5] reusing demo datasets in {data_dir} (same generation config)", flush=True)
        summaries = reused
    print(report.format_summaries(summaries))
    if a.data_only:
        return 0
    vq = os.path.join(out, "vqgan")
    print("[2/5] VQGAN image tokenizer", flush=True)
    if run_stage("vqgan", [py, "-m", "latent_pretraining.vqgan_train", "--config=configs/vqgan.py:demo",
                        f"--workdir={vq}", "--overwrite", f"--config.data.root={data_dir}",
                        f"--config.train.total_steps={a.vqgan_steps}",
                        f"--config.train.optimizer.warmup_steps={min(50, a.vqgan_steps // 10)}"],
                  out, os.path.join(vq, "eval.json"), redo):
        redo |= {"vla_lapa", "vla_vipra"}  # downstream stages depend on the tokenizer
    print("[3/5] latent action models", flush=True)
    for fam in ("lapa", "vipra"):
        wd = os.path.join(out, "lam", fam)
        ran = run_stage(f"lam_{fam}", [py, "-m", "lam.train", f"--config=configs/lam.py:{fam}_demo", f"--workdir={wd}",
                                 "--overwrite", f"--config.data.root={data_dir}",
                                 f"--config.data.cache_dir={os.path.join(out, 'lam', 'cache')}", *short],
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
               f"--config.text.tokenizer={os.path.join(out, 'text_tokenizer.model')}", *short]
        upstream |= run_stage(f"vla_{recipe}", cmd, out, os.path.join(wd, "summary.json"), redo)
    print_figures(out)
    print("[5/5] policies: scratch vs LAPA vs ViPRA on the same labelled demos", flush=True)
    import compare

    compare.main(["--out", os.path.join(out, "compare"), "--vla", os.path.join(out, "vla"), "--data-root", data_dir,
                  "--demos", a.compare_demos, "--episodes", str(a.compare_episodes)]
                 + (["--steps", str(a.smoke)] if a.smoke else [])
                 + (["--redo-all"] if upstream else []))
    print(f"demo finished in {time.time() - start:.0f} s")
    return 0


def print_figures(out: str) -> None:
    vq = load_json(os.path.join(out, "vqgan", "eval.json"))
    print(f"\nVQGAN: PSNR {vq['psnr']:.2f} dB (same-bit-budget baseline {vq['baseline_psnr']:.2f} dB), "
          f"{100 * vq['codebook_used_frac']:.0f}% of codes used")
    for fam in ("lapa", "vipra"):
        m = load_json(os.path.join(out, "lam", fam, "eval", "metrics.json"))
        print(f"LAM {fam}: perplexity {m['codebook/perplexity']:.2f} of {m['codebook/size']}, motion-direction probe "
              f"{m['probe/direction_acc']:.3f} (majority {m['probe/direction_majority']:.3f}), position probe "
              f"{m['probe/position_acc']:.3f} (majority {m['probe/position_majority']:.3f}), PSNR "
              f"{m['recon/psnr']:.2f} dB vs copy-last {m['recon/psnr_copy_last']:.2f} dB")
    for recipe in ("lapa", "vipra"):
        s = load_json(os.path.join(out, "vla", recipe, "summary.json"))
        e, t = s["eval"], s["train"]
        line = (f"VideoLLaMA {recipe}: held-out latent-action accuracy {e['acc_latent']:.3f} (chance "
                f"{e['latent_chance']:.3f}, majority code {e['latent_majority']:.3f})")
        if "acc_vision" in e:
            line += f", future-frame token accuracy {e['acc_vision']:.3f}"
        if "loss_flow" in t:
            line += (f", flow-matching loss {t['loss_flow']['first_10pct']:.3f} -> {t['loss_flow']['last_10pct']:.3f}"
                     f" (first -> last 10% of steps; held-out {e['loss_flow']:.3f})")
        print(line)
    print(f"plots: {out}/lam/*/eval/*.png, {out}/vla/*/curves.png; TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    from core import cli

    cli.run(main)
