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


def train_step_main(argv: list[str] | None = None) -> int:
    """`scripts/benchmark.py train-step ...`: latent_pretraining.benchmark.train_step_main with configs/ presets
    (the VideoLLaMA recipes lapa / vipra and the LAM presets, for `--model vla` / `--model lam`)."""
    from configs import lam, lapa, vipra
    from latent_pretraining import benchmark

    getters = {"lam": lam.get_config, "lapa": lapa.get_config, "vipra": vipra.get_config}
    return benchmark.train_step_main(list(argv or []), get_config=lambda kind, name: getters[kind](name))
