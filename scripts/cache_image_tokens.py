"""Offline VQGAN token cache: every frame of RLDS datasets → token ids in an .npz keyed by episode and step.

    python scripts/cache_image_tokens.py --tokenizer runs/vqgan_demo/tokenizer.safetensors \
        --root runs/demo/data --datasets demo_robot,demo_human --split train --output runs/tokens/demo_train.npz

Arrays: ids int32[N,h,w], episode int32[N] (→ episode_id, tfds_id), step int32[N], dataset int32[N]
(→ dataset_name). tfds_id str[E] is the record id the data pipeline hashes into its episode_id; the VideoLLaMA trainer
joins on it (latent_pretraining/token_cache.py). One file per split, named by a {split} pattern, e.g.
    for s in train val; do python scripts/cache_image_tokens.py --tokenizer T --split $s --output tok/$s.npz; done
    python -m latent_pretraining.train ... --config.cache.image='tok/{split}.npz'
Use the trainer's VQGAN, --resolution = its data.resolution and --datasets = its data.datasets. Episodes are read
through data/episodes.py like the pipeline reads them: the registry's standardized camera (--camera, default each
dataset's registry default), conventions (e.g. Bridge's dropped first step) and filters; entries are
name[:version][@root] (e.g. bridge_dataset:1.0.0@/data/rail), so any registered layout works.
The encode function is the same jitted `vqgan.encode_fn` used inside train steps, with the batch sharded over all
devices (see latent_pretraining/vqgan_data.py).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer .safetensors (trained or converted)")
    p.add_argument("--root", default="runs/demo/data", help="directory holding <name>/<version>")
    p.add_argument("--datasets", default="demo_robot,demo_human", help="comma-separated name[:version][@root]")
    p.add_argument("--camera", default="", help="primary | secondary | wrist (default: the registry's per dataset)")
    p.add_argument("--split", default="train")
    p.add_argument("--resolution", type=int, default=0, help="frame size (default: the tokenizer's resolution)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:  # before the tokenizer loads and anything is encoded
        from core.errors import UserError

        raise UserError(f"--output {args.output} already exists: pass --overwrite to replace it")

    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from latent_pretraining import vqgan_data
    from latent_pretraining.model import vqgan
    from latent_pretraining.training import mesh as mesh_lib

    cfg, params = vqgan.load_tokenizer(args.tokenizer)
    mesh = mesh_lib.make_mesh({"dp": 1, "fsdp": -1, "tp": 1, "sp": 1})
    batch = -(-args.batch_size // jax.device_count()) * jax.device_count()
    params = jax.device_put(params, NamedSharding(mesh, P()))
    enc = vqgan.make_encode_fn(cfg, mesh)
    info = vqgan_data.cache_image_tokens(lambda x: enc(params, x), args.root, args.datasets.split(","), args.split,
                                         args.resolution or cfg.resolution, args.output, batch_size=batch,
                                         camera=args.camera)
    print(f"wrote {args.output}: {info}")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main, sys.argv[1:])
