"""Offline normalization statistics (`python -m data.stats`) and hosts whose slice of a split is emptied by filters."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import rlds_fixtures as fx

from core import cli
from data import loader, normalization, windows
from data import mixture as mx
from data import stats as stats_cli
from data.rlds import DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    """kuka with 2 episodes in one shard: the registry keeps successful ones only and the fixture marks episode i
    successful iff i is even, so exactly one survives and a 2-host split leaves one host with nothing."""
    r = str(tmp_path_factory.mktemp("stats_root"))
    fx.write_dataset(r, "kuka", episodes=2, shards=1)
    fx.write_dataset(r, "demo_robot", episodes=4, shards=1)
    return r


def _cfg(root: str, stats_dir: str) -> mx.PipelineConfig:
    return mx.PipelineConfig(data_root=root, window=windows.vipra_window(), global_batch_size=4, resolution=16,
                             shuffle_buffer=8, stats_dir=stats_dir)


def test_offline_stats_are_the_ones_the_pipeline_reuses(root, tmp_path) -> None:
    d = str(tmp_path / "stats")
    records = stats_cli.compute_offline(root, "kuka,demo_robot", stats_dir=d, progress=False)
    assert [r["dataset"] for r in records] == ["kuka", "demo_robot"] and not any(r["cached"] for r in records)
    assert [r["num_trajectories"] for r in records] == [1, 4]  # kuka: the failed episode is filtered out
    by_name = {r["dataset"]: r for r in records}
    # the inline pass of a pipeline with another stats dir computes the same numbers
    robot = mx.Mixture("m", (mx.MixtureEntry("demo_robot", 1.0),))
    inline = loader.make_iterator(robot, _cfg(root, str(tmp_path / "x")), process_index=0,
                                  process_count=1).statistics["demo_robot"]
    offline = json.loads(Path(by_name["demo_robot"]["path"]).read_text())
    assert offline == inline
    # a pipeline pointed at the offline dir reads the file instead of computing: a marker in it comes back
    offline["num_transitions"] = 123_456
    Path(by_name["demo_robot"]["path"]).write_text(json.dumps(offline))
    it = loader.make_iterator(robot, _cfg(root, d), process_index=0, process_count=1)
    assert it.statistics["demo_robot"]["num_transitions"] == 123_456
    # a second offline call keeps the up-to-date file; --recompute replaces it
    again = stats_cli.compute_offline(root, "demo_robot", stats_dir=d, progress=False)
    assert again[0]["cached"] and again[0]["num_transitions"] == 123_456
    redo = stats_cli.compute_offline(root, "demo_robot", stats_dir=d, recompute=True, progress=False)
    assert not redo[0]["cached"] and redo[0]["num_transitions"] == inline["num_transitions"]


def test_a_stale_stats_file_is_recomputed(root, tmp_path) -> None:
    d = str(tmp_path / "stats")
    path = stats_cli.compute_offline(root, "demo_robot", stats_dir=d, progress=False)[0]["path"]
    stale = json.loads(Path(path).read_text())
    stale["features_hash"] = "another-spec"
    Path(path).write_text(json.dumps(stale))
    out = stats_cli.compute_offline(root, "demo_robot", stats_dir=d, progress=False)[0]
    assert not out["cached"]
    assert json.loads(Path(path).read_text())["features_hash"] != "another-spec"
    assert normalization.MAX_TRANSITIONS > 0


def test_cli_lines(root, tmp_path, capsys) -> None:
    """The command's output: one line per dataset; a mistake is one line on stderr with exit status 2."""
    args = ["--root", root, "--no-progress"]
    assert cli.call(lambda: stats_cli.main([*args, "--datasets", "kuka", "--stats-dir", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert out.startswith("kuka: 1 episodes,") and "computed in" in out and len(out.strip().splitlines()) == 1
    assert cli.call(lambda: stats_cli.main([*args, "--datasets", "kuka,demo_robt"])) == 2
    err = capsys.readouterr().err
    assert "did you mean 'demo_robot'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _first_batch_or_error(mixture: mx.Mixture, cfg: mx.PipelineConfig, process: int) -> str:
    try:
        next(loader.make_iterator(mixture, cfg, process_index=process, process_count=2))
        return "ok"
    except DataError as e:
        return str(e)


def test_a_host_whose_slice_is_emptied_by_the_filter_fails_in_one_line(root, tmp_path) -> None:
    """Two hosts: the one whose half of kuka is the failed episode refuses at once with a line naming the dataset and
    the host. Before the check a mixture quietly trained that host on demo_robot alone (a different mixture per
    host), and kuka alone ended with a vague 'no batch' error."""
    mixture = mx.Mixture("m", (mx.MixtureEntry("kuka", 1.0), mx.MixtureEntry("demo_robot", 1.0)))
    cfg = _cfg(root, str(tmp_path / "stats"))
    start = time.perf_counter()
    results = [_first_batch_or_error(mixture, cfg, p) for p in (0, 1)]
    assert time.perf_counter() - start < 120  # a hang guard, not a timing claim
    assert sorted(r == "ok" for r in results) == [False, True], results
    err = next(r for r in results if r != "ok")
    assert "dataset 'kuka'" in err and "of 2 reads part" in err and "no episode is left" in err
    assert "\n" not in err
    # one host reads everything: nothing to refuse
    single = loader.make_iterator(mixture, cfg, process_index=0, process_count=1)
    assert next(single).actions.shape[0] == 4
