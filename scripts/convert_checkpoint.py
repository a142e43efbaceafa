"""Convert LLaMA checkpoints between Hugging Face, EasyLM/LWM streaming msgpack and our format.

    python scripts/convert_checkpoint.py from-hf  HF_DIR  OUT_DIR [--no-scan] [--param-dtype bfloat16]
    python scripts/convert_checkpoint.py to-hf    OUR_DIR HF_OUT  [--dtype float32] [--shard-size-mb 2048]
    python scripts/convert_checkpoint.py from-lwm PARAMS  OUT_DIR [--rope-theta 5e7] [--head-dim 128]
                                                                  [--tie-embeddings]

Our format is described in ``latent_pretraining/convert/checkpoint.py`` (orbax params + config.json); the weight
mappings in ``latent_pretraining/convert/hf_llama.py`` and ``latent_pretraining/convert/lwm.py``.

Every tensor is checked against the config (names, counts, shapes, dtypes, NaN/inf) before anything is written;
inconsistent input is refused with one line on stderr naming the tensor (exit status 2), and the output directory is
left as it was. ``to-hf`` writes the checkpoint's own dtype unless ``--dtype`` is given. All three refuse a non-empty
output directory unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys

from core.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common_to_ours(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-scan", action="store_true", help="store layers unstacked (h/0, h/1, ...)")
        p.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")

    p = sub.add_parser("from-hf", help="HF LlamaForCausalLM directory -> our checkpoint")
    p.add_argument("src")
    p.add_argument("dst")
    common_to_ours(p)

    p = sub.add_parser("to-hf", help="our checkpoint -> HF LlamaForCausalLM directory")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights (default: the checkpoint's own)")
    p.add_argument("--shard-size-mb", type=int, default=2048)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")

    p = sub.add_parser("from-lwm", help="EasyLM/LWM/LAPA/ViPRA streaming-msgpack params file -> our checkpoint")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--rope-theta", type=float, default=5e7, help="5e7 for LWM-Chat-1M, LAPA and ViPRA")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--tie-embeddings", action="store_true",
                   help="the stream has no lm_head: use transformer/wte as the output head (LWM/LAPA/ViPRA do not)")
    common_to_ours(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:  # a refusal: one line (the traceback too with --debug), nothing written
        from core import cli

        return cli.report(e, f"convert_checkpoint {args.command}")


def run(args: argparse.Namespace) -> int:
    if args.command == "from-hf":
        from latent_pretraining.convert.hf_llama import convert_from_hf

        cfg = convert_from_hf(
            args.src, args.dst, scan_layers=not args.no_scan, param_dtype=args.param_dtype, overwrite=args.overwrite
        )
    elif args.command == "to-hf":
        from latent_pretraining.convert.hf_llama import convert_to_hf

        cfg = convert_to_hf(args.src, args.dst, dtype=args.dtype, max_shard_bytes=args.shard_size_mb * 2**20,
                            overwrite=args.overwrite)
    else:
        from latent_pretraining.convert.lwm import convert_from_lwm

        cfg = convert_from_lwm(
            args.src, args.dst, head_dim=args.head_dim, rope_theta=args.rope_theta, scan_layers=not args.no_scan,
            param_dtype=args.param_dtype, overwrite=args.overwrite, max_seq_len=args.max_seq_len,
            tie_embeddings=True if args.tie_embeddings else None,
        )  # fmt: skip
    print(f"{args.command}: {args.src} -> {args.dst} ({cfg.num_params() / 1e6:.1f}M backbone params)")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main, sys.argv[1:])
