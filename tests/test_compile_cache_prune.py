"""tests/conftest.py `prune_compilation_cache`: the test compilation cache is kept bounded without JAX's per-write
eviction scan (which lists the whole directory on every write)."""

import os

import conftest
import pytest


def _write(path, name: str, size: int, mtime: float) -> str:
    p = os.path.join(path, name)
    with open(p, "wb") as f:
        f.write(b"x" * size)
    os.utime(p, (mtime, mtime))
    return p


def test_prune_deletes_the_oldest_entries_down_to_half_the_limit(tmp_path) -> None:
    paths = [_write(tmp_path, f"e{i}-cache", 100, 1_000_000 + i) for i in range(10)]  # e0 oldest, 1000 bytes
    assert conftest.prune_compilation_cache(str(tmp_path), limit=1000) == 0  # at the limit: nothing goes
    assert all(os.path.exists(p) for p in paths)
    _write(tmp_path, "new-cache", 100, 2_000_000)  # 1100 bytes > 1000: down to 500, oldest first
    assert conftest.prune_compilation_cache(str(tmp_path), limit=1000) == 6
    assert sorted(os.listdir(tmp_path)) == ["e6-cache", "e7-cache", "e8-cache", "e9-cache", "new-cache"]
    assert conftest.prune_compilation_cache(str(tmp_path / "missing"), limit=1) == 0  # no cache yet: nothing to do


def test_prune_deletes_an_entry_with_its_access_time_and_leaves_other_files(tmp_path) -> None:
    # entries written while JAX's eviction was on have `-atime` files; they go with their executable, and an orphaned
    # one counts as oldest; JAX's lock file is not an entry
    _write(tmp_path, ".lockfile", 0, 1_000_000)
    _write(tmp_path, "gone-atime", 10, 3_000_000)  # no executable left
    for i in range(4):
        _write(tmp_path, f"k{i}-cache", 100, 1_000_000 + i)
        _write(tmp_path, f"k{i}-atime", 8, 3_000_000)  # newer than every executable: not what orders entries
    assert conftest.prune_compilation_cache(str(tmp_path), limit=440) == 3  # 442 bytes > 440: down to 220
    assert sorted(os.listdir(tmp_path)) == [".lockfile", "k2-atime", "k2-cache", "k3-atime", "k3-cache"]


def test_the_suite_runs_without_jax_eviction() -> None:
    # JAX's LRU eviction scans the whole cache directory on every write; the suite prunes once per session instead
    if not conftest.JAX_CACHE_DIR or conftest.CACHE_SIZE_FROM_CALLER:
        pytest.skip("the compilation cache is off, or the caller set JAX_COMPILATION_CACHE_MAX_SIZE")
    assert os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == "-1"
    import jax

    assert jax.config.jax_compilation_cache_max_size == -1


def test_entries_written_without_eviction_get_access_times_jax_can_evict_by(tmp_path) -> None:
    # a caller's JAX_COMPILATION_CACHE_MAX_SIZE turns JAX's eviction on over a cache the suite wrote without it: JAX
    # reads every entry's `-atime` file on each write, and without them no write succeeds
    from jax._src import lru_cache

    lru_cache.LRUCache(str(tmp_path), max_size=-1).put("old", b"x" * 100)  # the suite's default: no `-atime`
    os.utime(tmp_path / "old-cache", ns=(1_000_000_123, 1_000_000_123))
    assert os.listdir(tmp_path) == ["old-cache"]
    evicting = lru_cache.LRUCache(str(tmp_path), max_size=150)
    try:
        evicting.put("new", b"y" * 100)
    except FileNotFoundError as e:
        assert e.filename == str(tmp_path / "old-atime")
    else:
        raise AssertionError("JAX's eviction no longer needs every entry's -atime file; add_missing_atimes can go")
    assert conftest.add_missing_atimes(str(tmp_path)) == 1
    assert int.from_bytes((tmp_path / "old-atime").read_bytes(), "little") == 1_000_000_123
    assert conftest.add_missing_atimes(str(tmp_path)) == 0  # idempotent
    evicting.put("new", b"y" * 100)  # 200 bytes > 150: the old entry is evicted
    assert not (tmp_path / "old-cache").exists() and (tmp_path / "new-cache").exists()
