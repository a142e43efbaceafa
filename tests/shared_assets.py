"""Small artefacts several test modules need, built once per session (the fixtures in conftest.py use these).

Everything here is cheap to build or cached: the demo-dataset sizes, and a frozen tiny LAM labeler whose weights
are drawn from the init's shapes (`jax.eval_shape`) instead of compiling the init, which is ~20x cheaper and labels
just as deterministically. Tests that need a *trained* or *initialised* LAM build their own.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np

# the shared demo RLDS datasets: demo_robot / demo_human, 3 train + 2 val episodes each, 64 px, <= 40 steps, 2 shards
DEMO_DATA: dict[str, Any] = dict(episodes=3, val_episodes=2, resolution=64, num_shards=2, max_steps=40)


@functools.cache
def random_labeler(preset: str) -> tuple[Any, tuple[Any, Any, dict[str, int]]]:
    """(Labeler, (label fn, folded LAM variables, latent info)) of a random LAM `preset` ('lapa_tiny' /
    'vipra_tiny'); the tuple is what `latent_pretraining.train.build` takes. Float params ~ N(0, 0.2²) from a fixed
    seed; integer state zeros."""
    from configs import lam as lam_configs
    from lam import train as lam_train
    from lam.label import Labeler, fold_shift

    cfg = lam_configs.get_config(preset)
    cfg.data.cache_dir = ""
    shapes = nn.meta.unbox(jax.eval_shape(lam_train.make_init_fn(cfg), jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    variables = fold_shift(jax.tree.map(
        lambda s: (rng.normal(size=s.shape) * 0.2).astype(s.dtype) if np.issubdtype(s.dtype, np.floating)
        else np.zeros(s.shape, s.dtype), shapes))
    lab = Labeler(cfg, variables)
    info = {"codebook_size": int(cfg.model.codebook_size), "codes_per_step": lab.codes,
            "clip_len": int(cfg.data.clip_len), "offset": int(cfg.data.offset)}
    return lab, (lab.fn, variables, info)


def tiny_labeler(preset: str) -> tuple[Any, Any, dict[str, int]]:
    """(label fn, folded LAM variables, latent info) of `random_labeler(preset)`."""
    return random_labeler(preset)[1]
