"""Error types and the one message helper every package uses for unknown names.

`UserError` marks a mistake in what the user gave (a flag, a config field, a file): command-line entry points print
its message as one line and exit with status 2 (no traceback unless asked for). Its subclasses keep their
conventional bases too (e.g. `DataError(UserError, ValueError)`), so existing `except ValueError` still works.

`suggest` writes the "did you mean" tail the same way everywhere:

    >>> unknown("preset", "debg", ["debug", "demo", "7b"])
    "unknown preset 'debg'; did you mean 'debug'? (known: 7b, debug, demo)"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input; the message names what was wrong and what was expected."""


class InvalidInput(UserError, ValueError):
    """A value the user gave (a flag, a config field, a cache file) that the run cannot use with the rest of its
    input: e.g. a layout that does not fit the model, or a token cache from another VQGAN."""


def closest(name: str, known: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The known name closest to `name` (difflib ratio >= cutoff), or None."""
    hits = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=cutoff)
    return hits[0] if hits else None


def suggest(name: str, known: Iterable[str], *, cutoff: float = 0.6, list_known: bool = True,
            max_listed: int = 30) -> str:
    """The tail of an "unknown X" message: "; did you mean 'y'? (known: a, b, c)" (each part only when useful)."""
    known = sorted({str(k) for k in known})
    hint = closest(name, known, cutoff=cutoff)
    tail = f"; did you mean {hint!r}?" if hint else ""
    if list_known and known:
        shown = ", ".join(known[:max_listed]) + (", ..." if len(known) > max_listed else "")
        tail += f" (known: {shown})"
    return tail


def unknown(what: str, name: str, known: Iterable[str], **kwargs) -> str:
    """A whole message: "unknown <what> 'name'; did you mean ...? (known: ...)"."""
    return f"unknown {what} {name!r}" + suggest(name, known, **kwargs)
