"""The device mesh: four named axes ``(dp, fsdp, tp, sp)`` with GSPMD-style (Auto) axis types.

- ``dp``: pure data parallel (parameters replicated).
- ``fsdp``: data parallel with parameters/optimizer state sharded (ZeRO-3 style).
- ``tp``: tensor parallel (heads, MLP hidden, vocab).
- ``sp``: sequence parallel (activations sharded along the sequence).

The batch dimension of data is sharded over ``("dp", "fsdp")`` and optionally the sequence over ``sp``.
Usage::

    mesh = make_mesh({"dp": 1, "fsdp": -1, "tp": 1, "sp": 1})
    with jax.set_mesh(mesh):
        step = jax.jit(train_step, in_shardings=..., out_shardings=...)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES: tuple[str, str, str, str] = ("dp", "fsdp", "tp", "sp")
BATCH_AXES: tuple[str, str] = ("dp", "fsdp")

MeshShape = Mapping[str, int] | Sequence[int] | str


def parse_mesh_shape(shape: MeshShape, num_devices: int) -> tuple[int, int, int, int]:
    """Resolves a mesh shape to four positive sizes whose product is ``num_devices``.

    Args:
      shape: a mapping ``{"dp": 1, "fsdp": -1, ...}`` (missing axes are 1), a 4-sequence in ``MESH_AXES`` order, or a
        comma string like ``"1,-1,1,1"``. At most one size may be -1; it is inferred from ``num_devices``.
      num_devices: the number of devices the mesh must cover.
    """
    if isinstance(shape, str):
        try:
            shape = [int(s) for s in shape.split(",")]
        except ValueError as e:
            raise ValueError(f"mesh shape string {shape!r} must be 4 comma-separated integers, e.g. '1,-1,1,1'") from e
    if isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)} in {dict(shape)}; expected a subset of {MESH_AXES}")
        sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh shape {list(sizes)} must have {len(MESH_AXES)} entries, one per axis {MESH_AXES}")
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))}: at most one size may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))}: the fixed sizes (product {known}) do not "
                f"divide the device count {num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    elif known != num_devices:
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))} covers {known} devices but {num_devices} are "
            "available; use -1 for one axis to infer it"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(shape: MeshShape, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``Mesh`` over ``MESH_AXES`` with Auto axis types (GSPMD sharding propagation).

    Args:
      shape: see ``parse_mesh_shape``.
      devices: devices to use (default: all ``jax.devices()``).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_shape(shape, len(devices))
    try:
        from jax.experimental import mesh_utils

        device_array = mesh_utils.create_device_mesh(sizes, devices=devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        device_array = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_spec(ndim: int = 2, shard_sequence: bool = False) -> P:
    """PartitionSpec of data ``[batch, length, ...]``: batch over ``(dp, fsdp)``, length over ``sp`` if asked."""
    if ndim < 1:
        raise ValueError(f"batch arrays need at least one (batch) dimension, got ndim={ndim}")
    rest: list[str | None] = [None] * (ndim - 1)
    if shard_sequence and ndim >= 2:
        rest[0] = "sp"
    return P(BATCH_AXES, *rest)


def batch_sharding(mesh: Mesh, ndim: int = 2, shard_sequence: bool = False) -> NamedSharding:
    """NamedSharding for data ``[batch, length, ...]`` (see ``batch_spec``)."""
    return NamedSharding(mesh, batch_spec(ndim, shard_sequence))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated NamedSharding (scalars, rngs, step counters)."""
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards: the global batch size must be a multiple of this."""
    return int(mesh.shape["dp"] * mesh.shape["fsdp"])
