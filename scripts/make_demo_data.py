"""Write the demo world's RLDS datasets (demo_robot/1.0.0 and demo_human/1.0.0) under --out.

    python scripts/make_demo_data.py --out runs/demo/data --episodes 150 --resolution 64 --seed 0
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.demo import report, writer


def main(argv: list[str] | None = None) -> int:
    d = writer.GenerationConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="root directory; datasets go to OUT/<name>/<version>")
    p.add_argument("--episodes", type=int, default=d.episodes, help="train episodes per embodiment")
    p.add_argument("--val-episodes", type=int, default=d.val_episodes, help="val episodes per embodiment")
    p.add_argument("--resolution", type=int, default=d.resolution, help="image size: 64, 128 or 256")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated task families")
    p.add_argument("--embodiments", default=",".join(d.embodiments), help="robot,human")
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--camera-jitter", type=float, default=d.camera_jitter, help="per-frame image shift std (px)")
    p.add_argument("--distractors", type=int, default=d.num_distractors, help="moving task-irrelevant objects")
    p.add_argument("--shards", type=int, default=d.num_shards, help="TFRecord shards per split")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets of the same version")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    try:
        cfg = writer.GenerationConfig(
            episodes=a.episodes, val_episodes=a.val_episodes, resolution=a.resolution, seed=a.seed,
            tasks=tuple(t for t in a.tasks.split(",") if t),
            embodiments=tuple(e for e in a.embodiments.split(",") if e),
            max_steps=a.max_steps, camera_jitter=a.camera_jitter, num_distractors=a.distractors, num_shards=a.shards)
        summaries = writer.write_datasets(a.out, cfg, overwrite=a.overwrite, progress=not a.quiet)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.format_summaries(summaries))
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
