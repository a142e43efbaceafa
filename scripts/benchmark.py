"""Benchmarks, one subcommand each: ``python scripts/benchmark.py <subcommand> [args]`` (``--help`` per subcommand).

Each subcommand maps to ``"module:function"``; the function takes the remaining argv and returns an exit code. The
module is imported only when its subcommand runs, so one benchmark's dependencies never slow down another. Bare
module names (``compile_check``, ``benchmark_presets``) are the entry points next to this file in scripts/.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, str] = {
    "train-step": "benchmark_presets:train_step_main",
    "data": "benchmark_presets:data_main",
    "lam": "benchmark_presets:lam_main",
    "vla": "latent_pretraining.vla_benchmark:main",
    "compile": "compile_check:main",
    "sampler": "policy.sampler_benchmark:main",
    "xplane": "latent_pretraining.training.xplane:main",
    "matmuls": "latent_pretraining.matmul_benchmark:main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown benchmark {argv[0]!r}", file=sys.stderr)
        print(__doc__ + "\nsubcommands: " + ", ".join(sorted(SUBCOMMANDS)), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module_name, func_name = SUBCOMMANDS[argv[0]].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(argv[1:]) or 0)


if __name__ == "__main__":
    from core import cli

    cli.run(main)
