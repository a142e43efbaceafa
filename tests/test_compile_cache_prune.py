"""tests/conftest.py `prune_compilation_cache`: the test compilation cache is kept bounded without JAX's per-write
eviction scan (which lists the whole directory on every write)."""

import os

import conftest


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


def test_the_suite_runs_without_jax_eviction() -> None:
    # JAX's LRU eviction scans the whole cache directory on every write; the suite prunes once per session instead
    if conftest.JAX_CACHE_DIR and not conftest.CACHE_SIZE_FROM_CALLER:
        assert os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == "-1"
        import jax

        assert jax.config.jax_compilation_cache_max_size == -1
