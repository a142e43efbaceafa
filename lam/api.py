"""What other packages use of a trained LAM: a frozen labeler for the VideoLLaMA trainer (and its compile check).

    latent = latent_labeler("runs/lam_demo/lapa")         # (latent_fn, variables, info) of the latest checkpoint
    latent = abstract_latent_labeler(lam_config)          # the same from shapes only (no weights; compile check)
    latent = encoder_only(latent, frame_size=64)          # only the variables latent_fn reads (no decoder)

latent_fn(variables, clip u8[B, T, R, R, 3]) -> int32[B, T-1, C] is pure (it runs inside the VideoLLaMA's jitted
step); info: codebook_size, codes_per_step (C), clip_len (T), offset (frames between consecutive clip frames during
LAM training), preset, and for a trained run workdir and step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

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


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _used_leaves(fn: Callable, variables: Any, clip: jax.ShapeDtypeStruct) -> list[bool]:
    """Per leaf of `variables` (flatten order): does the traced `fn(variables, clip)` read it at all?"""
    closed = jax.make_jaxpr(fn)(_abstract(variables), clip)
    jaxpr = closed.jaxpr
    read = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    return [id(v) in read for v in jaxpr.invars[: len(jax.tree.leaves(variables))]]


def encoder_only(latent: LatentLabeler, frame_size: int) -> LatentLabeler:
    """`latent` with only the variables its `latent_fn` reads: the encoder, code head and quantizer of the LAM, not
    its decoder, which labelling never runs. The VideoLLaMA step carries the frozen LAM in its state (sharded and
    gathered every step), so this is memory and traffic saved on every device.

    Pruned per top-level module of each collection (a module is kept whole if any of its leaves is read), then
    checked by tracing `latent_fn` on the pruned tree; if that trace fails the full tree is kept (with a warning).
    `frame_size`: the side of the frames the trainer feeds (any size works: the labeler resizes)."""
    fn, variables, info = latent
    if not callable(fn) or not all(isinstance(t, Mapping) for t in dict(variables).values()):
        return latent  # no labeler (e.g. a policy run that never labels) or not a Flax variables dict: nothing to prune
    clip = jax.ShapeDtypeStruct((1, int(info["clip_len"]), frame_size, frame_size, 3), np.uint8)
    used = iter(_used_leaves(fn, variables, clip))
    used_tree = jax.tree.map(lambda _: next(used), variables)
    pruned = {col: {name: sub for name, sub in dict(tree).items() if any(jax.tree.leaves(used_tree[col][name]))}
              for col, tree in dict(variables).items()}
    pruned = {col: tree for col, tree in pruned.items() if tree}
    try:
        jax.eval_shape(fn, _abstract(pruned), clip)
    except Exception as e:  # any failure means the pruning was wrong: keep everything
        logging.warning("frozen LAM: keeping all variables (the encoder-only tree does not trace: %r)", e)
        return latent
    dropped = sorted(f"{col}/{name}" for col, tree in dict(variables).items() for name in dict(tree)
                     if name not in pruned.get(col, {}))
    logging.info("frozen LAM: %d of %d variables kept (dropped, unused by labelling: %s)",
                 sum(int(np.prod(x.shape)) for x in jax.tree.leaves(pruned)),
                 sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables)), ", ".join(dropped))
    return fn, pruned, info
