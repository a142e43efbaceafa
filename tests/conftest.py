"""Test-wide setup: 8 fake CPU devices (set before JAX is imported), quiet TensorFlow, no network, a persistent JAX
compilation cache, and session-scoped demo artefacts shared by every module.

The compilation cache. Most of the suite's time is XLA compiling tiny models; many tests build the same program
again (a fresh `jax.jit(...)` of the same init / step has an empty in-memory cache but the same HLO), and every run
of the suite compiles the same programs as the last one. A persistent cache keyed by the HLO turns both into a disk
read. It lives outside the repository (`~/.cache/latent-vla/jax-tests`, or `$LATENT_VLA_TEST_JAX_CACHE`; set that
to an empty string to switch it off) and is set through the environment, so the subprocesses some tests start
(training workers, script CLIs) share it. JAX treats the cache directory as trusted: keep it private to your user.
"""

import contextlib
import json
import os
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the huge-page malloc a trainer re-executes itself to get (core.cli.tune_malloc): set here, the trainers that tests
# start as subprocesses have it already and start once
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
# Compile cheaply: XLA's backend optimization level 0 and no expensive LLVM passes (JAX's own switch for this). On a
# cold compilation cache much of the suite's time is XLA optimizing tiny programs that then run for milliseconds.
# Stop 63, fresh clone, 2 cores: 14:41 of pytest cold against 18:31 with optimizations on, 5:28 warm against 5:32,
# the same 686 tests passing. Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test the fully optimized programs that training
# runs (they are cached under their own keys). The run's record (runs/tests/last.json) notes which it was.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

JAX_CACHE_DIR = os.environ.get("LATENT_VLA_TEST_JAX_CACHE",
                               os.path.join(os.path.expanduser("~"), ".cache", "latent-vla", "jax-tests"))
if JAX_CACHE_DIR:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", JAX_CACHE_DIR)
    # cache every program: the default 1 s floor would skip most of the tiny ones, which are the many
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    # No eviction by JAX: with a size limit set, every cache write lists and stats the whole directory and reads
    # every entry's access-time file under a lock shared by the workers (0.42 s per write at 5,800 entries, stop 63),
    # which made a cold run on a well-used cache minutes slower. Stale entries are pruned once per session instead
    # (`prune_compilation_cache`, oldest first past CACHE_PRUNE_BYTES; the suite writes ~0.06 GiB per cold run).
    # decided once, by the first process: pytest-xdist workers (and test subprocesses) inherit the value set below,
    # so they read the caller's choice from the marker, not from the variable itself
    CACHE_SIZE_FROM_CALLER = os.environ.setdefault(
        "LATENT_VLA_TEST_CACHE_SIZE_FROM_CALLER", str(int("JAX_COMPILATION_CACHE_MAX_SIZE" in os.environ))) == "1"
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")

import jax  # noqa: E402  (the environment above must be set first)
import pytest  # noqa: E402
from shared_assets import DEMO_DATA  # noqa: E402

from core import machine  # noqa: E402

assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.device_count()} (was JAX imported earlier?)"
if JAX_CACHE_DIR:  # the environment is what subprocesses inherit; this process gets the same settings explicitly
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))
    jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))


CACHE_PRUNE_BYTES = 1 << 30


def _cache_entries(path: str) -> dict[str, dict[str, os.DirEntry]]:
    """The files of JAX's compilation cache at `path`, {key: {suffix: file}}: `<key>-cache` (the executable) and,
    written only while JAX's eviction is on, `<key>-atime` (its last use). Other files (JAX's `.lockfile`) are left
    out."""
    entries: dict[str, dict[str, os.DirEntry]] = {}
    for entry in os.scandir(path) if os.path.isdir(path) else ():
        key, sep, suffix = entry.name.rpartition("-")
        if sep and suffix in ("cache", "atime") and entry.is_file():
            entries.setdefault(key, {})[suffix] = entry
    return entries


def prune_compilation_cache(path: str, limit: int = CACHE_PRUNE_BYTES) -> int:
    """Deletes the oldest entries (by the modification time of `<key>-cache`; an `-atime` file without its executable
    counts as oldest) of the compilation cache at `path` until it holds at most `limit` // 2 bytes, when it holds more
    than `limit`; returns how many entries were deleted. An entry's files go together: JAX's eviction, if a caller
    turns it on, reads the `-atime` file of every `-cache` file. A deleted entry that is still used is compiled again
    (and rewritten), so pruning costs time, never correctness."""
    sized = []
    for key, files in _cache_entries(path).items():
        age = files["cache"].stat().st_mtime if "cache" in files else float("-inf")
        sized.append((age, key, sum(f.stat().st_size for f in files.values()), files))
    total = sum(size for _, _, size, _ in sized)
    if total <= limit:
        return 0
    deleted = 0
    for _, _, size, files in sorted(sized, key=lambda e: e[:2]):
        if total <= limit // 2:
            break
        for f in files.values():
            with contextlib.suppress(FileNotFoundError):  # another session pruned it first
                os.remove(f.path)
        total -= size
        deleted += 1
    return deleted


def add_missing_atimes(path: str) -> int:
    """Writes `<key>-atime` (JAX's format: the time in ns, 8 bytes little-endian; here the executable's mtime) for
    every cache entry that lacks one; returns how many were written. Entries written while eviction was off have
    none, and JAX's eviction, once a caller turns it on, fails on them on every write (the entry is then not cached,
    and a warning is printed each time)."""
    written = 0
    for key, files in _cache_entries(path).items():
        if "cache" in files and "atime" not in files:
            with open(os.path.join(path, f"{key}-atime"), "wb") as out:
                out.write(files["cache"].stat().st_mtime_ns.to_bytes(8, "little"))
            written += 1
    return written


@pytest.fixture(scope="session")
def demo_data_written(tmp_path_factory) -> tuple[str, list[dict]]:
    """(root, writer summaries) of small demo-world RLDS datasets (demo_robot / demo_human, `DEMO_DATA`: 3 train +
    2 val episodes each, 64 px, up to 40 steps, 2 shards), written once per session instead of once per module.
    Read-only for tests: write your own copy to change anything."""
    from data.demo import writer

    root = str(tmp_path_factory.mktemp("demo_data"))
    summaries = writer.write_datasets(root, writer.GenerationConfig(**DEMO_DATA), progress=False)
    return root, summaries


@pytest.fixture(scope="session")
def demo_data(demo_data_written) -> str:
    """Root of the session's shared demo RLDS datasets (see `demo_data_written`)."""
    return demo_data_written[0]


# The modules that cost most (~20–55 s each in a one-process run of the default tier, 2026-12). `make test` hands
# whole files to 2 xdist workers in collection order (`--dist loadfile`); alphabetical order would start several of
# these last and leave one worker idle while the other finishes them. Starting them first leaves only small files
# for the end. Order only: a stale list costs time, never correctness.
HEAVY_MODULES = ("test_real_layouts", "test_data_mixture", "test_lam", "test_vla_train", "test_token_cache",
                 "test_faults_cli", "test_vqgan", "test_sampler", "test_blocked_attention", "test_vqgan_train",
                 "test_reference_policies", "test_chunked_ce", "test_lam_flow_targets", "test_lam_api")


def pytest_collection_modifyitems(config, items) -> None:
    """Heaviest modules first (see HEAVY_MODULES); the order inside a module and among the rest is kept."""
    rank = {name: i for i, name in enumerate(HEAVY_MODULES)}
    def key(item) -> int:
        module = getattr(item, "module", None)
        return rank.get(module.__name__.rsplit(".", 1)[-1] if module else "", len(rank))

    items.sort(key=key)


# The session's outcome and the machine it ran on, for `scripts/readme_results.py` (the README's test figures):
# runs/tests/last.json, or $LATENT_VLA_TEST_SUMMARY (empty: not written). Written by the controlling process only
# (xdist workers carry `workerinput`), after the run, so it never changes an outcome.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY_PATH = os.environ.get("LATENT_VLA_TEST_SUMMARY", os.path.join(ROOT, "runs", "tests", "last.json"))


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):
        config._latent_vla_start = machine.snapshot()
        # before the workers start (the controller compiles nothing)
        if JAX_CACHE_DIR and os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == "-1":
            prune_compilation_cache(JAX_CACHE_DIR)
        elif JAX_CACHE_DIR:  # the caller's limit: JAX evicts, and needs every entry's access time
            add_missing_atimes(JAX_CACHE_DIR)
        # warm or cold: a first run on a new machine compiles everything, later runs mostly read the cache
        config._latent_vla_cache = len(_cache_entries(JAX_CACHE_DIR)) if JAX_CACHE_DIR else 0


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    start = getattr(config, "_latent_vla_start", None)
    if not SUMMARY_PATH or start is None:
        return
    stats = terminalreporter.stats
    counts = {k: len(stats.get(k, [])) for k in ("passed", "failed", "error", "skipped", "deselected")}
    record = {"counts": counts, "exit_status": int(exitstatus), "markexpr": config.option.markexpr,
              "workers": getattr(config.option, "numprocesses", None) or 0,
              "seconds": round(time.time() - start["time"], 3), "revision": machine.git_revision(ROOT),
              "compile_cache_entries_at_start": getattr(config, "_latent_vla_cache", 0),
              "xla_most_optimizations_disabled": bool(jax.config.read("jax_disable_most_optimizations")),
              "start": start, "end": machine.snapshot()}
    try:
        os.makedirs(os.path.dirname(SUMMARY_PATH), exist_ok=True)
        with open(SUMMARY_PATH, "w") as f:
            json.dump(record, f, indent=1)
    except OSError as e:
        terminalreporter.write_line(f"test summary not written to {SUMMARY_PATH}: {e}")
