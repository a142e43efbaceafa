"""Logical-axis sharding: one rules table mapping logical dimension names to mesh axes.

Parameters are annotated in the model with ``nn.with_logical_partitioning(init, ("embed", "mlp"))`` and activations with
``with_logical_constraint(x, ("batch", "length", "act_embed"))``. Everything else (optimizer states, unannotated
modules) falls back to size-threshold FSDP. The core is one function of ``(shape, logical names or None)``
(``spec_for``), so it applies to any tree: params, optimizer states that mirror them, KV caches.

Resolution rules for one array:
- each named dimension takes the mesh axes of the first matching rule; axes already used by an earlier dimension,
  axes missing from the mesh and axes of size 1 are dropped;
- if the dimension size is not divisible by the product of its axes, trailing axes are dropped until it is
  (so tiny test configs and odd vocab sizes still shard correctly, just less);
- unannotated arrays of at least ``min_fsdp_bytes`` shard their largest dimension divisible by the ``fsdp`` size over
  ``fsdp``; smaller ones are replicated.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core.errors import unknown
from core.lookup import UnknownName

AxisRule = tuple[str, str | tuple[str, ...] | None]
Rules = Sequence[AxisRule]

# Parameters use the plain names, activations the ``act_``-prefixed ones (an activation's batch already takes
# ``fsdp``, so its embedding dimension must not).
DEFAULT_RULES: tuple[AxisRule, ...] = (
    # activations
    ("batch", ("dp", "fsdp")),
    ("length", "sp"),
    ("act_embed", None),
    ("act_heads", "tp"),
    ("act_kv_heads", "tp"),
    ("act_mlp", "tp"),
    ("act_vocab", "tp"),
    ("cache_length", None),
    # parameters
    ("embed", ("fsdp", "sp")),
    ("vocab", "tp"),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("head_dim", None),
    ("kv", None),
    ("mlp", "tp"),
    ("layers", None),
    ("norm", None),
)

DEFAULT_MIN_FSDP_BYTES = 4 * 2**20

_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("logical_axis_rules", default=None)


@contextlib.contextmanager
def logical_rules(rules: Rules) -> Iterator[None]:
    """Overrides the rules used by ``with_logical_constraint`` (and the default of ``param_shardings``) in a block."""
    token = _RULES.set(tuple(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> Rules:
    """The rules in effect: the innermost ``logical_rules`` block, else ``DEFAULT_RULES``."""
    return _RULES.get() or DEFAULT_RULES


def _mesh_sizes(mesh: Mesh | Any) -> Mapping[str, int]:
    return dict(mesh.shape)


def _rule_axes(name: str, rules: Rules) -> tuple[str, ...]:
    for logical, axes in rules:
        if logical == name:
            if axes is None:
                return ()
            return (axes,) if isinstance(axes, str) else tuple(axes)
    raise UnknownName(unknown("logical axis name", name, [r[0] for r in rules]) + " (no sharding rule)")


def _fit_axes(size: int, axes: Sequence[str], sizes: Mapping[str, int], used: set[str]) -> tuple[str, ...]:
    axes = [a for a in axes if a in sizes and sizes[a] > 1 and a not in used]
    while axes and size % math.prod(sizes[a] for a in axes):
        axes.pop()
    return tuple(axes)


def _entry(axes: tuple[str, ...]) -> str | tuple[str, ...] | None:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def logical_to_spec(
    shape: Sequence[int],
    names: Sequence[str | None],
    mesh: Mesh | Any,
    rules: Rules | None = None,
    *,
    names_are_mesh_axes: bool = False,
) -> P:
    """PartitionSpec for an array of ``shape`` whose dimensions carry logical ``names`` (None = unsharded).

    ``names_are_mesh_axes`` treats the names as mesh axes directly (plain ``nn.Partitioned`` metadata).
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match array shape {tuple(shape)} (rank differs)")
    rules = current_rules() if rules is None else rules
    sizes = _mesh_sizes(mesh)
    used: set[str] = set()
    entries = []
    for dim, name in zip(shape, names, strict=True):
        if name is None:
            entries.append(None)
            continue
        if names_are_mesh_axes:
            wanted = (name,) if isinstance(name, str) else tuple(name)
        else:
            wanted = _rule_axes(name, rules)
        axes = _fit_axes(int(dim), wanted, sizes, used)
        used.update(axes)
        entries.append(_entry(axes))
    return P(*entries)


def fsdp_spec(
    shape: Sequence[int],
    nbytes: int,
    mesh: Mesh | Any,
    min_fsdp_bytes: int = DEFAULT_MIN_FSDP_BYTES,
    fsdp_axes: tuple[str, ...] = ("fsdp",),
) -> P:
    """Fallback for unannotated arrays: shard the largest dim divisible by the fsdp size if ``nbytes`` is large."""
    sizes = _mesh_sizes(mesh)
    axes = tuple(a for a in fsdp_axes if sizes.get(a, 1) > 1)
    n = math.prod(sizes[a] for a in axes)
    if not axes or nbytes < min_fsdp_bytes:
        return P()
    for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[i] % n == 0:
            entries: list[Any] = [None] * len(shape)
            entries[i] = _entry(axes)
            return P(*entries)
    return P()


def spec_for(
    shape: Sequence[int],
    names: Sequence[str | None] | None,
    mesh: Mesh | Any,
    rules: Rules | None = None,
    *,
    dtype: Any = np.float32,
    min_fsdp_bytes: int = DEFAULT_MIN_FSDP_BYTES,
) -> P:
    """PartitionSpec from ``(shape, logical names or None)``: the rules if named, size-threshold FSDP otherwise."""
    if names is not None:
        return logical_to_spec(shape, names, mesh, rules)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return fsdp_spec(shape, nbytes, mesh, min_fsdp_bytes)


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _leaf_spec(leaf: Any, mesh: Mesh, rules: Rules, min_fsdp_bytes: int) -> P:
    if isinstance(leaf, nn.LogicallyPartitioned):
        value = leaf.value
        return logical_to_spec(np.shape(value), leaf.names, mesh, rules)
    if isinstance(leaf, meta.Partitioned):
        return logical_to_spec(np.shape(leaf.value), leaf.names, mesh, rules, names_are_mesh_axes=True)
    if _is_box(leaf):
        leaf = leaf.unbox()
    shape = tuple(np.shape(leaf))
    dtype = getattr(leaf, "dtype", np.float32)
    return spec_for(shape, None, mesh, rules, dtype=dtype, min_fsdp_bytes=min_fsdp_bytes)


def param_specs(
    tree: Any, mesh: Mesh, rules: Rules | None = None, *, min_fsdp_bytes: int = DEFAULT_MIN_FSDP_BYTES
) -> Any:
    """A tree of PartitionSpec with the structure of ``unbox(tree)`` (boxes become plain leaves)."""
    rules = current_rules() if rules is None else rules
    return jax.tree.map(lambda x: _leaf_spec(x, mesh, rules, min_fsdp_bytes), tree, is_leaf=_is_box)


def param_shardings(
    tree: Any, mesh: Mesh, rules: Rules | None = None, *, min_fsdp_bytes: int = DEFAULT_MIN_FSDP_BYTES
) -> Any:
    """A tree of NamedSharding for any (abstract or concrete, boxed or plain) array tree.

    Boxed leaves (``nn.LogicallyPartitioned`` from ``nn.with_logical_partitioning``) use their logical names;
    other leaves use size-threshold FSDP. The result has the structure of ``unbox(tree)``, so it can be passed as
    ``in_shardings``/``out_shardings`` for the unboxed tree.
    """
    specs = param_specs(tree, mesh, rules, min_fsdp_bytes=min_fsdp_bytes)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def unbox(tree: Any) -> Any:
    """Strips partitioning metadata boxes (``nn.Partitioned`` and friends), leaving plain arrays."""
    return meta.unbox(tree)


def logical_names(tree: Any) -> Any:
    """Tree with each leaf's logical names tuple (or None when unannotated), structure of ``unbox(tree)``."""
    return jax.tree.map(lambda x: tuple(x.names) if isinstance(x, meta.Partitioned) else None, tree, is_leaf=_is_box)


def with_logical_constraint(x: jax.Array, names: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op when no mesh is set (``jax.set_mesh``)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(x.shape, names, mesh, rules)
    return jax.lax.with_sharding_constraint(x, spec)


def shard_tree(tree: Any, shardings: Any) -> Any:
    """Places a (plain) array tree on devices with the given sharding tree."""
    return jax.device_put(tree, shardings)
