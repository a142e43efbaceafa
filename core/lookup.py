"""One lookup for named things (presets, registries, config fields) that fails with a "did you mean" message.

    cfg_fn = lookup(PRESETS, "lapa_dmo", "LAM preset")   # UnknownName: unknown LAM preset 'lapa_dmo'; did you mean
                                                        # 'lapa_demo'? (known: lapa, lapa_demo, ...)
    check_names({"rope_thetta": 1.0}, FIELDS, "LlamaConfig field")
    node, leaf = field(config, "train.optimizer.grad_acum")  # UnknownName naming 'train.optimizer.grad_accum_steps'

`UnknownName` is a `UserError` and also a `KeyError` and a `ValueError`, so callers written against either of the
exception types the hand-written lookups used to raise keep working. Imports nothing of ours but core.errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TypeVar

from core.errors import UserError, unknown

T = TypeVar("T")


class UnknownName(UserError, KeyError, ValueError):
    """A name that is not among the known ones; the message suggests the closest and lists the rest."""

    def __str__(self) -> str:  # KeyError would quote the message (repr); users read it as one plain line
        return str(self.args[0]) if self.args else ""


def lookup(table: Mapping[str, T] | Iterable[str], name: str, what: str, *, error: type[Exception] = UnknownName,
           **kwargs: Any) -> T | str:
    """table[name] for a mapping (or `name` itself for a collection of names); unknown names raise `error` with
    `core.errors.unknown(what, name, known)` (kwargs go to `suggest`, e.g. list_known=False)."""
    if isinstance(table, Mapping):
        if name in table:
            return table[name]
        raise error(unknown(what, name, table.keys(), **kwargs))
    known = list(table)
    if name in known:
        return name
    raise error(unknown(what, name, known, **kwargs))


def check_names(given: Iterable[str], known: Iterable[str], what: str, *, error: type[Exception] = UnknownName,
                **kwargs: Any) -> None:
    """Raises `error` for the first name in `given` that is not in `known` (e.g. dataclass fields of a dict)."""
    known = list(known)
    for name in given:
        if name not in known:
            raise error(unknown(what, name, known, **kwargs))


def field(config: Mapping[str, Any], dotted: str, what: str = "config field") -> tuple[Any, str]:
    """(parent node, leaf key) of the existing field `dotted` ('a.b.c') of a nested mapping / ConfigDict; a missing
    level raises UnknownName suggesting the closest full path among that level's siblings."""
    *parents, leaf = dotted.split(".")
    node: Any = config
    for depth, key in enumerate([*parents, leaf]):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            raise UnknownName(f"unknown {what} {dotted!r}: {'.'.join(parents[:depth])!r} is a value, not a group")
        if key not in node:
            prefix, siblings = ".".join([*parents[:depth], ""]), list(node.keys())
            raise UnknownName(unknown(what, dotted, [prefix + k for k in siblings], list_known=False))
        if depth < len(parents):
            node = node[key]
    return node, leaf


def set_field(config: MutableMapping[str, Any], dotted: str, value: Any, what: str = "config field") -> None:
    """config[a][b][c] = value for an existing field 'a.b.c' (UnknownName otherwise)."""
    node, leaf = field(config, dotted, what)
    node[leaf] = value
