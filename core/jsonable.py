"""One JSON helper for results, metadata and server answers: any nested structure -> strict-JSON values.

Used by the policy server (``/metadata``), the closed-loop evaluator (its result files) and the policy metadata
record; ``write_json`` writes the report files of the command-line tools. Imports nothing of ours (``core`` sits at
the bottom of the module graph).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from typing import Any

import numpy as np

__all__ = ["jsonable", "write_json"]


def jsonable(x: Any) -> Any:
    """``x`` with every value made strict-JSON: dict keys become ``str``; tuples, lists and numpy arrays become lists;
    numpy scalars become Python scalars; dataclasses become dicts; enums their value; paths and any other object
    ``str(x)``. Non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"``: ``json.dumps`` would write
    ``NaN``/``Infinity``, which strict parsers (browsers, ``jq``, Go) reject, and ``null`` would hide what it was."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    if isinstance(x, enum.Enum):
        return jsonable(x.value)
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return str(x)


def write_json(path: str, obj: Any, *, indent: int = 2) -> None:
    """Writes ``obj`` as JSON to ``path``: the parent directories are created (a report is written after minutes of
    work, which a missing folder must not throw away) and the file is replaced atomically (a reader never sees half)."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)
