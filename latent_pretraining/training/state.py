"""Train state: built abstractly (`eval_shape`), sharded, then materialized by one jitted init directly on device.

    variables = init_fn(rng)            # e.g. lambda rng: model.init(rng, dummy_batch); {"params": ..., ...}
    abstract  = jax.eval_shape(...)     # no memory used
    shardings = sharding.param_shardings(abstract, mesh)   (logical names or size-threshold FSDP)
    state     = jax.jit(init, out_shardings=shardings)(rng, loaded)

Partial loading (`loaded_params`, e.g. converted LWM / HF weights, or another stage's checkpoint): every loaded leaf
must exist in the model with the same shape (floats may differ in precision and are cast to the model's param dtype;
other dtype changes are errors). Leaves the checkpoint lacks keep the **model's own initializer**, drawn from the run's
seed (not LAPA's lecun_normal with a fixed PRNGKey(0)); they are listed in the returned `LoadReport`. Unexpected
entries (in the checkpoint, not in the model) are an error unless `allow_unexpected=True`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from latent_pretraining.training import sharding as sharding_lib
from latent_pretraining.training.mesh import replicated
from latent_pretraining.training.optim import path_str

PyTree = Any
InitFn = Callable[[jax.Array], Mapping[str, Any]]


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes. `model_state` holds non-trained collections (e.g. batch stats)."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array
    ema_params: PyTree | None = None
    model_state: PyTree | None = None


@dataclasses.dataclass
class LoadReport:
    """Which param paths came from the checkpoint, which kept a fresh init, and which were cast."""

    loaded: list[str]
    missing: list[str]
    cast: list[str]

    def summary(self) -> str:
        return (
            f"partial load: {len(self.loaded)} loaded, {len(self.missing)} freshly initialized"
            + (f" ({', '.join(self.missing[:8])}{', ...' if len(self.missing) > 8 else ''})" if self.missing else "")
            + (f", {len(self.cast)} cast to the model dtype" if self.cast else "")
        )


def _split_variables(variables: Mapping[str, Any]) -> tuple[PyTree, PyTree | None]:
    if "params" not in variables:
        raise ValueError(f"init_fn must return flax variables with a 'params' collection, got keys {list(variables)}")
    rest = {k: v for k, v in variables.items() if k != "params"}
    return variables["params"], (rest or None)


def flatten(tree: PyTree) -> dict[str, Any]:
    """{'a/b/c': leaf} for a nested param tree."""
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_loaded(
    abstract_params: PyTree, loaded: PyTree, *, allow_unexpected: bool = False
) -> tuple[dict[str, Any], LoadReport]:
    """Validates `loaded` (nested dict or flat {'a/b': array}) against the model; returns (flat arrays, report)."""
    want = flatten(abstract_params)
    got = loaded if all(isinstance(k, str) and not isinstance(v, Mapping) for k, v in loaded.items()) else None
    got = dict(got) if got is not None else flatten(loaded)
    unexpected = sorted(set(got) - set(want))
    if unexpected and not allow_unexpected:
        raise ValueError(
            f"checkpoint has {len(unexpected)} params the model lacks, e.g. {unexpected[:5]}; "
            "pass allow_unexpected=True to ignore them"
        )
    out, cast = {}, []
    for path, arr in got.items():
        if path not in want:
            continue
        exp = want[path]
        if tuple(np.shape(arr)) != tuple(exp.shape):
            raise ValueError(f"param {path!r}: checkpoint shape {tuple(np.shape(arr))} != model shape {exp.shape}")
        src, dst = jnp.dtype(arr.dtype), jnp.dtype(exp.dtype)
        if src != dst:
            if not (jnp.issubdtype(src, jnp.floating) and jnp.issubdtype(dst, jnp.floating)):
                raise ValueError(f"param {path!r}: checkpoint dtype {src} cannot be cast to model dtype {dst}")
            cast.append(path)
        out[path] = arr
    report = LoadReport(loaded=sorted(out), missing=sorted(set(want) - set(out)), cast=cast)
    return out, report


def _opt_state_shardings(abstract_opt: PyTree, abstract_params: PyTree, param_shard: PyTree, mesh: Mesh) -> PyTree:
    """Optimizer-state leaves that mirror a param (path suffix + shape match) take its sharding; others fall back."""
    table = {}
    for (path, a), s in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_shard), strict=True
    ):
        table[tuple(path_str([k]) for k in path)] = (tuple(a.shape), s)

    def one(path, leaf):
        keys = tuple(path_str([k]) for k in path if isinstance(k, jax.tree_util.DictKey))
        for i in range(len(keys)):
            hit = table.get(keys[i:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return sharding_lib.param_shardings(leaf, mesh)

    return jax.tree_util.tree_map_with_path(one, abstract_opt)


def _plan(init_fn, tx, mesh, rng, ema, loaded_params, allow_unexpected, rules, loaded_model_state=None):
    init_rng, state_rng = jax.random.split(rng)
    abstract_boxed, _ = _split_variables(jax.eval_shape(init_fn, init_rng))
    param_shard = sharding_lib.param_shardings(abstract_boxed, mesh, rules)
    abstract_params = sharding_lib.unbox(abstract_boxed)
    flat_abstract = flatten(abstract_params)

    report, loaded_flat = None, {}
    if loaded_params is not None:
        loaded_flat, report = check_loaded(abstract_params, loaded_params, allow_unexpected=allow_unexpected)
        logging.info(report.summary())
    flat_shard = flatten(param_shard)
    loaded_shard = {k: flat_shard[k] for k in loaded_flat}

    def init(rng_init, rng_state, loaded, loaded_ms):
        params, model_state = _split_variables(init_fn(rng_init))
        if loaded_ms is not None:  # e.g. frozen tokenizer weights: jit arguments, not constants baked into the HLO
            model_state = jax.tree.map(lambda a, x: a.astype(x.dtype), loaded_ms, sharding_lib.unbox(model_state))
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: loaded[path_str(p)].astype(flat_abstract[path_str(p)].dtype) if path_str(p) in loaded else x,
            sharding_lib.unbox(params),
        )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=rng_state,
            ema_params=params if ema else None,
            model_state=sharding_lib.unbox(model_state) if model_state is not None else None,
        )

    abstract_state = jax.eval_shape(init, init_rng, state_rng, loaded_flat, loaded_model_state)
    rep = replicated(mesh)
    shardings = TrainState(
        step=rep,
        params=param_shard,
        opt_state=_opt_state_shardings(abstract_state.opt_state, abstract_params, param_shard, mesh),
        rng=rep,
        ema_params=param_shard if ema else None,
        model_state=(
            sharding_lib.param_shardings(abstract_state.model_state, mesh)
            if abstract_state.model_state is not None
            else None
        ),
    )
    ms_shard = shardings.model_state if loaded_model_state is not None else None
    jitted = jax.jit(init, in_shardings=(rep, rep, loaded_shard, ms_shard), out_shardings=shardings)
    return jitted, (init_rng, state_rng, loaded_flat, loaded_model_state), abstract_state, shardings, report


def create_train_state(
    init_fn: InitFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array,
    *,
    ema: bool = False,
    loaded_params: PyTree | None = None,
    allow_unexpected: bool = False,
    rules: Any = None,
    loaded_model_state: PyTree | None = None,
) -> tuple[TrainState, TrainState, LoadReport | None]:
    """Builds the sharded state on device. Returns (state, state_shardings, load report or None).

    Args:
      init_fn: rng -> flax variables {"params": ..., other collections...}; params may carry logical-axis boxes.
      tx: the optimizer (`optim.make_optimizer`).
      mesh: device mesh; param shardings follow `sharding.param_shardings` (logical rules, else size-based FSDP).
      rng: the run's base key (`jax.random.PRNGKey(seed)`); split into an init key and the state's key, from which
        the step derives fold_in(key, step).
      ema: keep an EMA copy of the params (initialized to the params).
      loaded_params: optional partial weights (see module docstring).
      allow_unexpected: ignore loaded entries the model does not have (else an error).
      rules: logical-axis rules (default: `sharding.current_rules()`).
      loaded_model_state: optional values for the whole `model_state` (same tree as init_fn's non-param
        collections), e.g. frozen tokenizer weights; passed as arguments of the jitted init, not as constants.
    """
    with jax.set_mesh(mesh):
        jitted, args, _, shardings, report = _plan(init_fn, tx, mesh, rng, ema, loaded_params, allow_unexpected,
                                                   rules, loaded_model_state)
        return jitted(*args), shardings, report


def abstract_train_state(
    init_fn: InitFn, tx: optax.GradientTransformation, mesh: Mesh, rng: jax.Array, *, ema: bool = False,
    rules: Any = None,
) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs with shardings, shardings) without allocating: the restore target."""
    with jax.set_mesh(mesh):
        _, _, abstract, shardings, _ = _plan(init_fn, tx, mesh, rng, ema, None, False, rules)
    return abstract_like(abstract, shardings), shardings


def abstract_like(state: PyTree, shardings: PyTree) -> PyTree:
    """ShapeDtypeStructs carrying shardings (restore targets) for a concrete or abstract state."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state, shardings
    )

