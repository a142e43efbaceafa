"""The main job on the built-in demo world (what `make demo` runs).

Stage 1 (today): generate the demo RLDS datasets (robot demonstrations + action-free human video) and summarise
them. Later stages (LAM -> VideoLLaMA pretraining -> co-training -> policy) are appended here as they land.

    python scripts/demo.py --out runs/demo
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data.demo import report, writer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory (datasets go to OUT/data)")
    p.add_argument("--episodes", type=int, default=writer.GenerationConfig.episodes)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    start = time.time()
    data_dir = os.path.join(a.out, "data")
    cfg = writer.GenerationConfig(episodes=a.episodes, seed=a.seed)
    reused = writer.existing_summaries(data_dir, cfg)
    if reused is None:
        print(f"[1/1] generating demo datasets in {data_dir} ...", flush=True)
        summaries = writer.write_datasets(data_dir, cfg, overwrite=True)
    else:
        print(f"[1/1] reusing demo datasets in {data_dir} (same generation config)", flush=True)
        summaries = reused
    print(report.format_summaries(summaries))
    print(f"demo finished in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
