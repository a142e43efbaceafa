"""Convert LWM's released VQGAN weights (a pickled Flax params tree) into a tokenizer file, safely.

    python scripts/convert_vqgan.py --input /path/to/LWM/vqgan --output checkpoints/vqgan_lwm.safetensors \
        [--orbax checkpoints/vqgan_lwm_orbax] [--overwrite]

The pickle is read by a restricted unpickler (only containers and numpy arrays; anything else is refused before it
runs) and validated against the `lwm` architecture; see latent_pretraining/convert/vqgan_pickle.py. An existing
--output file or --orbax directory is refused before anything is read unless --overwrite. Then:
`cfg, params = latent_pretraining.model.vqgan.load_tokenizer("checkpoints/vqgan_lwm.safetensors")`.
"""

from __future__ import annotations

import argparse

from core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="LWM `vqgan` params pickle")
    parser.add_argument("--output", default="", help="tokenizer .safetensors to write")
    parser.add_argument("--orbax", default="", help="also write an orbax PyTree checkpoint directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output / --orbax")
    args = parser.parse_args(argv)
    if not args.output and not args.orbax:
        parser.error("give --output and/or --orbax")
    from latent_pretraining.convert import vqgan_pickle

    try:
        cfg, _ = vqgan_pickle.convert(args.input, args.output or None, orbax_dir=args.orbax or None,
                                      overwrite=args.overwrite)
    except UserError as e:  # refused (unsafe, malformed, inconsistent, too large, or the output exists): one line
        from core import cli  # (the traceback too with --debug); nothing written

        return cli.report(e, "convert_vqgan")
    print(f"converted {args.input} -> {args.output or ''} {args.orbax or ''} "
          f"(codebook {cfg.num_embeddings}x{cfg.embed_dim}, downsample {cfg.downsample})")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
