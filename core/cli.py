"""Command-line entry points: the user's mistakes as ONE line on stderr (exit 2), a traceback only when asked.

Every `python -m ...` / `python scripts/...` entry point ends with one of

    if __name__ == "__main__":      # argparse: main(argv: list[str] | None) -> int | None
        from core import cli

        cli.run(main)

    if __name__ == "__main__":      # absl: flags defined above, main(argv) as for app.run
        from core import cli

        cli.run_absl(main)

What counts as the user's mistake (`USER_ERRORS`): `core.errors.UserError` and its subclasses (e.g.
`data.rlds.DataError`, `core.errors.InvalidInput` for a value the rest of the config or the inputs rule out), config
errors met while absl parses `--config` and its `--config.a.b=v` overrides (a
missing or unloadable file, an unknown preset, an unknown field — with the closest field suggested — or a value of
the wrong type), other absl flag errors, and files that are missing / already there (FileNotFoundError,
FileExistsError, ...). Anything else is a bug and keeps Python's traceback. `--debug` (anywhere before a `--`) or
`LATENT_VLA_DEBUG=1` prints the full traceback of a user error too; the exit status stays 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from core import quiet
from core.errors import UserError, unknown

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LATENT_VLA_DEBUG"
MALLOC_ENV = quiet.MALLOC_ENV  # "default": trainers keep glibc's default malloc (see tune_malloc)
EXIT_USER_ERROR = 2  # argparse's status for bad arguments, so every kind of bad input exits the same way
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_DEBUG = [False]  # --debug was on this process's command line (set by run / run_absl, read by `debugging`)
_MLC_WRAPPER = "Error whilst parsing config file"  # ml_collections re-raises config-file errors with a traceback


class ConfigError(UserError):
    """A --config file, preset, override field or override value that cannot be used."""


# ----------------------------------------------------------------------------------------------------------- runners
def run(main: Callable[[list[str]], Any], argv: list[str] | None = None, *, trainer: bool = False) -> NoReturn:
    """`sys.exit(main(argv))` for an argparse main; `--debug` is taken out of argv first (not after a `--`).
    `trainer=True`: a long-running trainer, started with huge-page malloc (`tune_malloc`)."""
    default_xla_flags()
    if trainer:
        tune_malloc()
    args, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    _DEBUG[0] = debug
    sys.exit(call(lambda: main(args), debug=debug))


def run_absl(main: Callable[[list[str]], Any], *, trainer: bool = False) -> NoReturn:
    """`app.run(main)` whose flag parsing turns config/flag errors into `ConfigError`/`UserError` (one line);
    `trainer` as for `run`."""
    from absl import app

    default_xla_flags()
    if trainer:
        tune_malloc()
    sys.argv[1:], debug = pop_debug(sys.argv[1:])  # in place: ml_collections reads overrides from sys.argv
    _DEBUG[0] = debug
    sys.exit(call(lambda: app.run(main, flags_parser=parse_flags), debug=debug))


# XLA flags every entry point runs with unless XLA_FLAGS already names them (the user's value wins). Read when JAX
# creates its backend (the first computation), so setting them in `run` is in time; flags of another backend are
# parsed and ignored. --xla_gpu_enable_triton_gemm=false: GEMMs through cuBLAS instead of XLA's Triton fusions; on an
# H200 (jax 0.11.2) the `1b` bf16 train step ran 5 % faster, scanned (0.472 -> 0.449 s) and unrolled (0.434 ->
# 0.413 s) alike (docs/training.md, "Measured on a GPU"); MaxText's GPU recipes turn it off too.
DEFAULT_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


def default_xla_flags(environ: dict[str, str] | None = None) -> None:
    """Adds each of `DEFAULT_XLA_FLAGS` to XLA_FLAGS unless a flag of that name is already there."""
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    named = {token.split("=")[0] for token in flags.split()}
    for flag in DEFAULT_XLA_FLAGS:
        if flag.split("=")[0] not in named:
            flags = f"{flags} {flag}".strip()
    env["XLA_FLAGS"] = flags


def tune_malloc(environ: dict[str, str] | None = None) -> None:
    """Re-executes this process, once, with `core.quiet.MALLOC_TUNABLES` in GLIBC_TUNABLES, so a trainer started
    by hand gets the huge-page malloc that `make demo`'s stages get from `core.quiet.child_env` (glibc reads the
    variable only at process start; on the D512 AdamW step it saved ~9 % CPU and 94 % of the page faults,
    docs/training.md). Nothing happens when GLIBC_TUNABLES is already set (the user's value wins, and the re-executed
    process has it), when MALLOC_ENV is "default", off Linux, or when the command line is not known."""
    from core import quiet

    env = os.environ if environ is None else environ
    argv = getattr(sys, "orig_argv", None)
    if (not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in env
            or env.get(MALLOC_ENV, "").strip().lower() == "default" or not argv or not sys.executable):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(argv), {**env, "GLIBC_TUNABLES": quiet.MALLOC_TUNABLES})


def call(fn: Callable[[], Any], *, debug: bool = False) -> int:
    """fn()'s exit status (an int result, else 0); a user error -> its one line on stderr and EXIT_USER_ERROR."""
    try:
        result = fn()
    except USER_ERRORS as e:
        return report(e, debug=debug)
    return result if isinstance(result, int) else 0  # e.g. policy.evaluate's main returns its metrics dict


def debugging(debug: bool = False) -> bool:
    """Whether the user asked for tracebacks: `debug`, `--debug` on this process's command line, or DEBUG_ENV."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return debug or _DEBUG[0] or env


def report(e: BaseException, name: str | None = None, *, debug: bool = False) -> int:
    """Prints a user error as `<name>: error: <one line>` (name: `prog()`), after its traceback when `debugging`;
    returns EXIT_USER_ERROR. For a main that catches its own refusals (the converters name their subcommand)."""
    if debugging(debug):
        traceback.print_exception(e, file=sys.stderr)
    print(f"{name or prog()}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_USER_ERROR


def pop_debug(args: list[str]) -> tuple[list[str], bool]:
    """(args without `--debug`, whether it was there); arguments after a `--` belong to a child command."""
    end = args.index("--") if "--" in args else len(args)
    head = [a for a in args[:end] if a != DEBUG_FLAG]
    return head + args[end:], len(head) < end


def prog() -> str:
    """How the user ran us: the module name under `python -m`, else the script's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0] or "python")


def one_line(e: BaseException) -> str:
    """The message as one line: OS errors as 'what: path', others their text with newlines folded."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.strerror}: {e.filename!r}"
    elif isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])  # str(KeyError) would wrap the message in quotes
    else:
        text = str(e) or type(e).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


# ------------------------------------------------------------------------------------------------- absl / configs
def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing for `app.run(flags_parser=...)`: any failure becomes one `UserError` (the cause chained)."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
    except Exception as e:  # every failure here comes from the command line or the config file
        err = translate_flag_error(e, argv)
        if err is None:
            raise
        raise err from e
    for name, flag in _config_flags():
        _check_loaded(name, flag, argv)
    return rest


def translate_flag_error(e: Exception, argv: list[str]) -> UserError | None:
    """The one-line error for a failure while parsing flags (None: not the user's; re-raise as is)."""
    from absl import flags

    m = re.match(r"flag --([^=\s]+)=", str(e)) if isinstance(e, flags.Error) else None
    for name, flag in _config_flags():
        if m and m.group(1).startswith(name + "."):
            return _bad_value(name, m.group(1)[len(name) + 1:], flag.value, argv, e)
        arg = _flag_argument(argv, name)
        if arg is None:
            continue
        try:
            config = flag.parser.parse(arg)  # the same file and preset again: configs are pure functions
        except Exception as load_error:  # reported as the reason the file could not be used
            return ConfigError(f"cannot load --{name}={arg}: {one_line(_root(load_error))}")
        if _error_config(config) is not None:
            return _unloadable(name, arg, _error_config(config))
        for path in _override_paths(argv, name):
            if not _has_path(config, path):
                return ConfigError(unknown_field(path, config))
    if isinstance(e, flags.Error):
        return UserError(one_line(_root(e)))
    return None


def unknown_field(path: str, config: Any) -> str:
    """"unknown config field 'a.b'; did you mean 'a.c.d'? (fields of 'a': ...)" over every dotted path."""
    hint = closest_field(path, list(field_paths(config)))
    msg = unknown("config field", path, [hint] if hint else [], cutoff=0.0, list_known=False)
    node, known = config, ""  # list the deepest existing section's fields: what the user can write there
    for part in path.split(".")[:-1]:
        if not _is_section(node) or part not in node:
            break
        node, known = node[part], f"{known}.{part}" if known else part
    return msg + f" ({f'fields of {known!r}' if known else 'top-level fields'}: {', '.join(sorted(node.keys()))})"


def field_paths(config: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted path of a ConfigDict, sections included ('train', 'train.optimizer', 'train.optimizer.lr')."""
    for key, value in config.items():
        yield prefix + key
        if _is_section(value):
            yield from field_paths(value, f"{prefix}{key}.")


def closest_field(path: str, fields: list[str], *, cutoff: float = 0.6) -> str | None:
    """The field the user most likely meant: a close whole path, a close leaf name in a similar section, or a leaf
    that abbreviates the typed one ('learning_rate' -> 'lr')."""
    parent, _, leaf = path.rpartition(".")
    parts = path.split(".")

    def score(field: str) -> float:
        fparent, _, fleaf = field.rpartition(".")
        fparts = field.split(".")
        same = 0
        while same < min(len(parts), len(fparts)) and parts[same] == fparts[same]:
            same += 1
        rest = _ratio(".".join(parts[same:]), ".".join(fparts[same:]))  # a shared section prefix proves nothing
        near = _ratio(parent, fparent) if (parent or fparent) else 1.0  # same section counts for a little
        s = max(rest, 0.7 * _ratio(leaf, fleaf) + 0.3 * near)
        if _abbreviates(leaf, fleaf) or _abbreviates(fleaf, leaf):
            s = max(s, 0.85 * (0.7 + 0.3 * near))
        return s

    scored = sorted(((score(f), f) for f in fields if f != path), key=lambda t: (-t[0], t[1]))
    return scored[0][1] if scored and scored[0][0] >= cutoff else None


def _bad_value(name: str, path: str, config: Any, argv: list[str], e: Exception) -> UserError:
    try:
        current = _get(config, path)
    except Exception:  # without the config the absl message is still one clear line
        return ConfigError(one_line(_root(e)))
    given = _flag_argument(argv, f"{name}.{path}")
    kind = type(current).__name__ if current is not None else "a value of the field's type"
    return ConfigError(f"bad value {given!r} for config field {path!r}: expected {kind} (now {current!r})")


def _check_loaded(name: str, flag: Any, argv: list[str]) -> None:
    """ml_collections defers a missing config file until first use; and a None config means --config was not given."""
    if flag.value is None:
        raise ConfigError(f"missing --{name}: expected {flag.help}")
    err = _error_config(flag.value)
    if err is not None:
        raise _unloadable(name, _flag_argument(argv, name) or "", err)


def _unloadable(name: str, arg: str, err: BaseException) -> ConfigError:
    """A config file that could not be read: a missing one gets the closest .py file of its folder suggested."""
    path = arg.split(":", 1)[0]
    if os.path.isfile(path):
        return ConfigError(f"cannot load --{name}={arg}: {one_line(err)}")
    folder = os.path.dirname(path)
    known = [os.path.join(folder, f) for f in sorted(os.listdir(folder or ".")) if f.endswith(".py")] \
        if os.path.isdir(folder or ".") else []
    return ConfigError(f"cannot load --{name}={arg}: " + unknown("config file", path, known))


def _config_flags() -> list[tuple[str, Any]]:
    from absl import flags
    from ml_collections.config_flags.config_flags import is_config_flag

    return [(n, flags.FLAGS[n]) for n in flags.FLAGS if is_config_flag(flags.FLAGS[n])]


def _flag_argument(argv: list[str], name: str) -> str | None:
    """The value given as `--name=v` or `--name v` (the last one wins, as in absl)."""
    value = None
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _override_paths(argv: list[str], name: str) -> list[str]:
    prefix = f"--{name}."
    return [a[len(prefix):].split("=", 1)[0] for a in argv if a.startswith(prefix)]


def _get(config: Any, path: str) -> Any:
    from ml_collections.config_flags import config_path

    return config_path.get_value(path, config)


def _has_path(config: Any, path: str) -> bool:
    try:
        _get(config, path)
    except (AttributeError, KeyError, IndexError, ValueError, TypeError):
        return False
    return True


def _error_config(value: Any) -> BaseException | None:
    """The load error ml_collections stored in its stand-in for a config file it could not read (else None)."""
    if value is None or _is_section(value) or dataclasses.is_dataclass(value):
        return None
    err = vars(value).get("_error") if hasattr(value, "__dict__") else None  # vars(): no __getattr__ trap
    return err if isinstance(err, BaseException) else None


def _is_section(value: Any) -> bool:
    from ml_collections import ConfigDict

    return isinstance(value, ConfigDict)


def _root(e: BaseException) -> BaseException:
    """Unwrap absl's and ml_collections' re-raises of a config-file error down to the error the file raised."""
    from absl import flags

    while e.__context__ is not None and (_MLC_WRAPPER in str(e) or (isinstance(e, flags.Error) and "\n" in str(e))):
        e = e.__context__
    return e


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _abbreviates(short: str, long: str) -> bool:
    """'lr' abbreviates 'learning_rate' (and its typo 'lerning_rate'): the initials of two or more words."""
    words = [w for w in long.split("_") if w]
    return len(words) >= 2 and short == "".join(w[0] for w in words)
