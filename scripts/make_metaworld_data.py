"""Write the Meta-World RLDS datasets (metaworld_robot/1.0.0 and metaworld_video/1.0.0) under --out.

    python scripts/make_metaworld_data.py --out runs/metaworld/data --episodes 60 --resolution 64 --seed 0

Needs MuJoCo off-screen rendering (MUJOCO_GL, default egl); see docs/metaworld.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.metaworld import writer
from data.metaworld.env import RenderError


def _names(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


def main(argv: list[str] | None = None) -> int:
    d = writer.GenerationConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="root directory; datasets go to OUT/<name>/<version>")
    p.add_argument("--episodes", type=int, default=d.episodes, help="train episodes per dataset")
    p.add_argument("--val-episodes", type=int, default=d.val_episodes, help="val episodes per dataset")
    p.add_argument("--resolution", type=int, default=d.resolution, help="square image size in px (16-512)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--robot-tasks", default=",".join(d.robot_tasks), help="comma-separated tasks with actions")
    p.add_argument("--video-tasks", default=",".join(d.video_tasks), help="comma-separated action-free tasks")
    p.add_argument("--datasets", default=",".join(d.datasets), help="robot,video")
    p.add_argument("--camera", default=d.camera)
    p.add_argument("--noise", type=float, default=d.noise, help="std of the expert's Gaussian action noise")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="episode step limit (0: per-task limit)")
    p.add_argument("--shards", type=int, default=d.num_shards, help="TFRecord shards per split")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets of the same version")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    try:
        cfg = writer.GenerationConfig(
            episodes=a.episodes, val_episodes=a.val_episodes, resolution=a.resolution, seed=a.seed,
            robot_tasks=_names(a.robot_tasks), video_tasks=_names(a.video_tasks), datasets=_names(a.datasets),
            camera=a.camera, noise=a.noise, max_steps=a.max_steps, num_shards=a.shards)
        summaries = writer.write_datasets(a.out, cfg, overwrite=a.overwrite, progress=not a.quiet)
    except (ValueError, FileExistsError, RenderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(writer.format_summaries(summaries))
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
