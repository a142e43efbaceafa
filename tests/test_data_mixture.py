"""Mixtures, batches, determinism, resume, per-host splits and global arrays on tiny demo-layout fixtures."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import rlds_fixtures as fx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import mixtures
from data import batch as batch_lib
from data import loader, oxe, rlds, windows
from data import mixture as mx
from data.augment import AugmentConfig
from data.rlds import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

DEMO = mx.Mixture("demo3to1", (mx.MixtureEntry("demo_robot", 3.0), mx.MixtureEntry("demo_human", 1.0)))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> mx.PipelineConfig:
    return mx.PipelineConfig(data_root=fx.shared_root("demo"), window=windows.vipra_window(), global_batch_size=16,
                             resolution=16, shuffle_buffer=64, augment=AugmentConfig(), read_parallelism=2,
                             stats_dir=str(tmp_path_factory.mktemp("stats")))


def _take(it: loader.DataIterator, n: int) -> list[dict]:
    return [next(it).to_dict() for _ in range(n)]


def _assert_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_vla_batches_and_proportions(cfg) -> None:
    it = loader.make_iterator(DEMO, cfg, process_index=0, process_count=1)
    assert it.dataset_names == ["demo_robot", "demo_human"]
    batches = [next(it) for _ in range(30)]
    b = batches[0]
    assert isinstance(b, batch_lib.VLABatch)
    assert b.history.shape == (16, 2, 16, 16, 3) and b.history.dtype == np.uint8
    assert b.future.shape == (16, 16, 16, 3) and b.actions.shape == (16, 14, 7) and b.proprio.shape == (16, 8)
    assert b.action_pad_mask.shape == (16, 14) and b.language.shape == (16,)
    idx = np.concatenate([x.dataset_index for x in batches])
    frac = (idx == 0).mean()
    assert abs(frac - 0.75) < 0.07, frac  # 480 samples, binomial sd ~0.02
    for x in batches:
        human = x.dataset_index == 1
        assert not x.action_valid[human].any() and not x.action_pad_mask[human].any()
        assert not x.actions[human][..., :6].any()  # padding: zero motion, gripper open
        robot = ~human
        # robot frames: action valid except at the (invalid) last step; gripper stays raw (1 = open)
        lengths = np.array([8 + int(s.decode().rsplit("ep", 1)[1]) % 13 for s in x.language])
        np.testing.assert_array_equal(x.action_valid[robot], (x.step != lengths - 1)[robot])
        assert (x.actions[robot][x.action_pad_mask[robot]][:, 6] == 1.0).all()
        assert all(s.decode().startswith("pick up the block ep") for s in x.language)
        first = x.step == 0
        assert not x.history_valid[first, 0].any() and x.history_valid[:, 1].all()
    stats = it.statistics
    assert set(stats) == {"demo_robot", "demo_human"} and stats["demo_human"]["num_action_transitions"] == 0


def test_determinism(cfg) -> None:
    a = _take(loader.make_iterator(DEMO, cfg, process_index=0, process_count=1), 4)
    b = _take(loader.make_iterator(DEMO, cfg, process_index=0, process_count=1), 4)
    _assert_equal(a, b)
    c = _take(loader.make_iterator(DEMO, dataclasses.replace(cfg, seed=1), process_index=0, process_count=1), 4)
    assert any(not np.array_equal(x["history"], y["history"]) for x, y in zip(a, c, strict=True))


def test_resume_exact_across_segments(cfg) -> None:
    cfg = dataclasses.replace(cfg, segment_batches=3)
    it = loader.make_iterator(DEMO, cfg, process_index=0, process_count=1)
    _take(it, 4)
    state = json.dumps(it.get_state())  # JSON-serializable, a few bytes
    assert len(state) < 200
    full = _take(it, 4)  # the uninterrupted run's batches 4..7
    resumed = loader.make_iterator(DEMO, cfg, process_index=0, process_count=1)
    resumed.set_state(json.loads(state))
    _assert_equal(_take(resumed, 4), full)  # crosses the segment boundary at batch 6
    other = loader.make_iterator(DEMO, dataclasses.replace(cfg, seed=5), process_index=0, process_count=1)
    with pytest.raises(DataError, match="different mixture/pipeline config"):
        other.set_state(state)


def test_per_host_splits_disjoint_and_covering() -> None:
    opened = rlds.open_dataset(fx.shared_root("demo"), "demo_robot", "1.0.0")

    def ids(split: str) -> list[bytes]:
        ds = rlds.read_episodes(opened, split, seed=None, shuffle_files=False)
        return [e["tfds_id"] for e in ds.map(lambda e: {"tfds_id": e["tfds_id"]}).as_numpy_iterator()]

    all_ids = ids("train")
    parts = []
    for p in range(3):
        split, disjoint = rlds.host_split(opened, "train", p, 3)
        assert disjoint
        parts.append(set(ids(split)))
    assert sum(len(s) for s in parts) == len(all_ids) == 16
    assert set().union(*parts) == set(all_ids)
    _, disjoint = rlds.host_split(opened, "train", 0, 64)  # fewer episodes than hosts: read whole, per-host seed
    assert not disjoint
    assert rlds.resolve_split(opened, "val") == "val"


def test_a_train_only_dataset_holds_out_its_val_episodes_from_training(tmp_path) -> None:
    """'val' of a dataset with only a train split was its last 5 % while 'train' stayed all of it: held-out figures
    (VideoLLaMA summary, LAM probes) were computed on training episodes. Per-host parts still split the rest."""
    root = str(tmp_path)
    fx.write_dataset(root, "bridge_dataset", episodes=40, lengths=(2, 3))
    spec = oxe.get_spec("bridge_dataset")
    opened = rlds.open_dataset(root, "bridge_dataset", spec.default_version)
    assert set(opened.splits) == {"train"}

    def ids(split: str) -> set[bytes]:
        ds = rlds.read_episodes(opened, split, seed=None, shuffle_files=False)
        return {e["tfds_id"] for e in ds.map(lambda e: {"tfds_id": e["tfds_id"]}).as_numpy_iterator()}

    train, val = (rlds.resolve_split(opened, s) for s in ("train", "val"))
    assert (train, val) == (rlds.TRAIN_PART, rlds.VAL_PART)
    assert not ids(train) & ids(val) and len(ids(val)) == 2 and ids(train) | ids(val) == ids("train[:100%]")
    assert rlds.resolve_split(opened, "train[:10]") == "train[:10]"  # a slice the user asked for is kept
    parts = [rlds.host_split(opened, "train", p, 2) for p in range(2)]
    assert all(disjoint for _, disjoint in parts)
    assert not ids(parts[0][0]) & ids(parts[1][0]) and ids(parts[0][0]) | ids(parts[1][0]) == ids(train)


def test_two_hosts_see_disjoint_episodes(cfg) -> None:
    mix = mx.Mixture("robot", (mx.MixtureEntry("demo_robot"),))
    seen = []
    for p in range(2):
        it = loader.make_iterator(mix, cfg, process_index=p, process_count=2)
        bs = _take(it, 6)
        assert bs[0]["history"].shape[0] == 8  # local slice of the global batch of 16
        seen.append({int(e) for x in bs for e in x["episode_id"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_global_arrays_and_other_kinds(cfg) -> None:
    mesh = Mesh(np.array(jax.devices()), ("dp",))
    sharding = NamedSharding(mesh, PartitionSpec("dp"))
    it = loader.make_iterator(DEMO, cfg, sharding=sharding, process_index=0, process_count=1)
    b = next(it)
    assert isinstance(b.history, jax.Array) and b.history.shape == (16, 2, 16, 16, 3)
    assert b.history.sharding == sharding and len(b.history.addressable_shards) == 8
    assert isinstance(b.language, np.ndarray)
    lam = next(loader.make_iterator(DEMO, dataclasses.replace(cfg, window=windows.lam_window(clip_len=4)),
                                    process_index=0, process_count=1))
    assert isinstance(lam, batch_lib.LAMBatch) and lam.clip.shape == (16, 4, 16, 16, 3)
    assert lam.actions.shape == (16, 3, 7) and lam.clip_valid.shape == (16, 4)
    pol = next(loader.make_iterator(DEMO, dataclasses.replace(cfg, window=windows.WindowSpec("policy", (0,), 4),
                                                              wrist_resolution=8), process_index=0, process_count=1))
    assert isinstance(pol, batch_lib.PolicyBatch) and pol.history.shape == (16, 1, 16, 16, 3)
    assert pol.wrist.shape == (16, 8, 8, 3) and not pol.wrist_valid.any() and not pol.wrist.any()


def test_an_evaluation_split_is_normalized_with_the_training_statistics(cfg) -> None:
    """Held-out batches were normalized with their own split's statistics while the model had trained on (and
    norm_stats.json recorded) the training split's: the held-out losses and the LAPA bin targets were shifted."""
    robot = mx.Mixture("robot", (mx.MixtureEntry("demo_robot"),))
    train, val, val_as_trained = (mx.open_mixture(robot, dataclasses.replace(cfg, split=s, stats_split=t))[0]
                                  for s, t in (("train", ""), ("val", ""), ("val", "train")))
    assert val_as_trained.split == "val" and val_as_trained.stats == train.stats
    assert val.stats["action"]["mean"] != train.stats["action"]["mean"]  # the statistics differ between splits
    base = loader.fingerprint(robot, cfg, 0, 1)  # a training stream's fingerprint is what it was before the field
    assert loader.fingerprint(robot, dataclasses.replace(cfg, stats_split="train"), 0, 1) == base
    assert loader.fingerprint(robot, dataclasses.replace(cfg, split="val", stats_split="train"), 0, 1) != \
        loader.fingerprint(robot, dataclasses.replace(cfg, split="val"), 0, 1)


def test_configs_mixtures_registry() -> None:
    assert [e.name for e in mixtures.get_mixture("demo").entries] == ["demo_robot", "demo_human"]
    for m in mixtures.MIXTURES.values():
        for e in m.entries:
            oxe.get_spec(e.name)  # every member is registered
    with pytest.raises(KeyError, match="did you mean 'oxe_magic_soup'"):
        mixtures.get_mixture("oxe_magic_soop")
    with pytest.raises(DataError, match="did you mean 'demo_robot'"):
        mx.open_mixture(mx.Mixture("x", (mx.MixtureEntry("demo_robt"),)), mx.PipelineConfig(data_root="/nonexistent"))


def test_benchmark_entry_point(capsys, tmp_path) -> None:
    root = fx.shared_root("demo")
    capsys.readouterr()
    args = ["--data-root", root, "--window", "lam", "--clip-len", "3", "--batches", "2",
            "--warmup", "1", "--batch-size", "8", "--resolution", "16", "--shuffle-buffer", "16",
            "--stats-dir", str(tmp_path), "--resume-at", "5"]
    import benchmark_presets  # scripts/ (the entry point resolves configs/mixtures.py names)

    assert benchmark_presets.data_main([*args, "--mixture", "demo"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "samples/s" in out[-2] and "peak RSS" in out[-2]
    r = json.loads(out[-1])
    assert r["samples_per_s"] > 0 and r["decoded_frames_per_s"] == pytest.approx(3 * r["samples_per_s"])
    assert r["resume_first_batch_s"] > 0
    from data import benchmark

    assert benchmark.parse_inline_mixture("demo_robot=3,demo_human:1.0.0").entries[1].version == "1.0.0"
