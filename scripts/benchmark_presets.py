"""`scripts/benchmark.py data` / `lam`: the data and LAM benchmarks with names resolved from configs/ (named mixtures,
LAM presets). They live here, not in configs/ (presets only) nor in data/ or lam/ (which never import configs)."""

from __future__ import annotations


def data_main(argv: list[str] | None = None) -> int:
    """`scripts/benchmark.py data ...`: data.benchmark.main with configs/mixtures.py names."""
    from configs.mixtures import get_mixture
    from data import benchmark

    return benchmark.main(argv, resolve_mixture=get_mixture)


def lam_main(argv: list[str] | None = None) -> int:
    """`scripts/benchmark.py lam ...`: lam.benchmark.main with configs/lam.py presets."""
    from configs.lam import get_config
    from lam import benchmark

    return benchmark.main(argv, get_config=get_config)
