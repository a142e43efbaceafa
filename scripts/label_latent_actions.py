"""Write latent-action ids for every step of RLDS datasets (format: lam/label.py docstring).

    python scripts/label_latent_actions.py --lam=runs/lam_demo/lapa --data-root=runs/demo/data \
        --datasets=demo_robot,demo_human --splits=train,val --out=runs/lam_demo/labels
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lam", required=True, help="LAM training run directory (with checkpoints/)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    ap.add_argument("--data-root", required=True, help="directory holding <dataset>/<version>/")
    ap.add_argument("--datasets", required=True, help="comma-separated name[:version][@root] (registry defaults)")
    ap.add_argument("--camera", default="", help="primary | secondary | wrist (default: the LAM's data.camera, else "
                    "the registry's per dataset)")
    ap.add_argument("--splits", default="train", help="comma-separated splits")
    ap.add_argument("--out", required=True, help="output directory of the id cache")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--overwrite", action="store_true", help="replace ids already in --out for these datasets")
    args = ap.parse_args(argv)

    from data.mixture import parse_mixture
    from lam.label import Labeler, load_lam, write_cache

    mixture = parse_mixture(args.datasets, name="--datasets")  # every entry checked (one line per mistake) first
    there = [p for e in mixture.entries for s in args.splits.split(",")
             for p in (os.path.join(args.out, e.name, f"{s}.npz"),) if os.path.exists(p)]
    if there and not args.overwrite:
        from core.errors import UserError

        raise UserError(f"--out {args.out} already holds {there[0]}"
                        f"{f' and {len(there) - 1} more' if len(there) > 1 else ''}: pass --overwrite to replace them")
    config, variables = load_lam(args.lam, args.step)
    labeler = Labeler(config, variables)
    for name in args.datasets.split(","):
        for split in args.splits.split(","):
            path = write_cache(labeler, args.data_root, name, split, args.out, batch_size=args.batch_size,
                               checkpoint=args.lam, camera=args.camera)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main, sys.argv[1:])
