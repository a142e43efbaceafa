"""What other packages use of a trained LAM: a frozen labeler for the VideoLLaMA trainer (and its compile check).

    latent = latent_labeler("runs/lam_demo/lapa")         # (latent_fn, variables, info) of the latest checkpoint
    latent = abstract_latent_labeler(lam_config)          # the same from shapes only (no weights; compile check)

latent_fn(variables, clip u8[B, T, R, R, 3]) -> int32[B, T-1, C] is pure (it runs inside the VideoLLaMA's jitted
step); info: codebook_size, codes_per_step (C), clip_len (T), offset (frames between consecutive clip frames during
LAM training), preset, and for a trained run workdir and step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from lam.label import Labeler, load_lam

LatentLabeler = tuple[Callable[[Any, Any], Any], Any, dict[str, Any]]


def _info(config: ml_collections.ConfigDict, labeler: Labeler) -> dict[str, Any]:
    return {"codebook_size": int(config.model.codebook_size), "codes_per_step": labeler.codes,
            "clip_len": int(config.data.clip_len), "offset": int(config.data.offset), "preset": config.preset}


def latent_labeler(workdir: str, step: int | None = None) -> LatentLabeler:
    """(latent_fn, variables, info) of the LAM run in `workdir` at checkpoint `step` (None or < 0: the latest)."""
    step = None if step is None or step < 0 else int(step)
    config, variables = load_lam(workdir, step)
    labeler = Labeler(config, variables)
    return labeler.fn, variables, {**_info(config, labeler), "workdir": workdir, "step": config.checkpoint_step}


def abstract_latent_labeler(config: ml_collections.ConfigDict) -> LatentLabeler:
    """(latent_fn, abstract variables (jax.ShapeDtypeStruct leaves), info) of an untrained LAM `config`."""
    import flax.linen as nn
    import jax

    from lam import train as lam_train

    variables = jax.eval_shape(lam_train.make_init_fn(config), jax.random.PRNGKey(0))
    variables = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.meta.unbox(variables))
    labeler = Labeler(config, variables)
    return labeler.fn, variables, _info(config, labeler)
