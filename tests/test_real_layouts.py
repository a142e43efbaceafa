"""Real OXE layouts through every offline tool (issue 21): one episode reader, lineage conventions, cross-root mixtures.

Hand-made Bridge episodes check the conventions against arrays worked out by hand; the Bridge fixture
(tests/rlds_fixtures.py: int32 episode ids, has_image_* flags, black absent cameras, all-zero first action) runs each
tool that used to assume the demo layout.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import rlds_fixtures as fx

from core.errors import UserError
from data import episodes, oxe, rlds, windows
from data import mixture as mx
from data.tf_setup import tfds
from lam import data as lam_data
from latent_pretraining import vqgan_data

# ------------------------------------------------------------------------------------------------ hand-made data
# Raw actions of the hand-made 5-step Bridge episode: step 0 all zero (as in BridgeData V2), then x = 0.1..0.4 and
# gripper 0.99 (open), 0.6 (half-way into a close), 0.01, 0.01 (closed).
RAW = np.array([[0, 0, 0, 0, 0, 0, 0],
                [.1, 0, 0, 0, 0, 0, .99],
                [.2, 0, 0, 0, 0, 0, .6],
                [.3, 0, 0, 0, 0, 0, .01],
                [.4, 0, 0, 0, 0, 0, .01]], np.float32)
# Registry defaults (OpenVLA bridge_orig drops step 0; Octo's scan sends 0.6 to the next settled state, closed):
EXPECTED_DEFAULT = np.array([[.1, 0, 0, 0, 0, 0, 1],
                             [.2, 0, 0, 0, 0, 0, 0],
                             [.3, 0, 0, 0, 0, 0, 0],
                             [.4, 0, 0, 0, 0, 0, 0]], np.float32)
# gripper_relabel='threshold', drop_first_step=False (the old behaviour): 0.6 > 0.5 reads as open.
EXPECTED_THRESHOLD_GRIPPER = np.array([0, 1, 1, 0, 0], np.float32)


def _hand_episode(features, index: int, *, wrist_flag: bool, wrist_black: bool) -> dict:
    ep = fx.make_episode("bridge_dataset", features, index, len(RAW), seed=0)
    for t, s in enumerate(ep["steps"]):
        s["action"] = RAW[t].copy()
        s["observation"]["image_0"] = np.full_like(s["observation"]["image_0"], 120)
        if wrist_black:
            s["observation"]["image_3"] = np.zeros_like(s["observation"]["image_3"])
        else:
            s["observation"]["image_3"] = np.full_like(s["observation"]["image_3"], 200)
    ep["episode_metadata"]["has_image_3"] = wrist_flag
    ep["episode_metadata"]["episode_id"] = np.int32(7 + index)
    return ep


@pytest.fixture(scope="module")
def hand_root(tmp_path_factory) -> str:
    """bridge_dataset/1.0.0 with 2 hand-made episodes: ep0 has_image_3 false (black wrist frames), ep1 has_image_3
    true but its wrist frames are black too (only blank-frame detection can tell)."""
    root = str(tmp_path_factory.mktemp("hand"))
    _, feats = fx.layouts(16)["bridge_dataset"]
    eps = [(f"ep{i}", _hand_episode(feats, i, wrist_flag=i == 1, wrist_black=True)) for i in range(2)]
    tfds.dataset_builders.store_as_tfds_dataset(
        name="bridge_dataset", version="1.0.0", features=feats, split_datasets={"train": eps}, data_dir=root,
        download_config=tfds.download.DownloadConfig(num_shards=1), disable_shuffling=True)
    return root


@pytest.fixture(scope="module")
def bridge_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("bridge"))
    fx.write_dataset(root, "bridge_dataset", episodes=6, lengths=(6, 8), res=16, splits=("train", "val"), shards=1)
    return root


def _std(root: str, name: str = "bridge_dataset") -> list[dict]:
    spec = oxe.get_spec(name)
    opened = rlds.open_dataset(root, name, spec.default_version)
    handle = mx.DatasetHandle(mx.MixtureEntry(name), spec, opened, "train", {})
    trajs = list(mx.standardized(handle, "train", seed=None, shuffle_files=False).as_numpy_iterator())
    return sorted(trajs, key=lambda t: t["language"])


# ------------------------------------------------------------------------------------------------ conventions
def test_scan_gripper_relabel_by_hand() -> None:
    g = np.array([.99, .6, .3, .01, .01, .99, .5], np.float32)
    # backwards from the last raw value 0.5: 0.5 (unsettled tail kept), 1, 0, 0, 0 (0.3 -> next settled 0), 0, 1
    np.testing.assert_array_equal(oxe.scan_relabel_gripper(g).numpy(), [1, 0, 0, 0, 0, 1, .5])
    np.testing.assert_array_equal(oxe.binarize_gripper(g).numpy(), [1, 1, 0, 0, 0, 1, 0])


def test_bridge_conventions_on_hand_made_episodes(hand_root) -> None:
    trajs = _std(hand_root)
    assert len(trajs) == 2
    for tr in trajs:
        np.testing.assert_allclose(tr["action"], EXPECTED_DEFAULT, atol=1e-7)
        assert tr["image_primary"].shape == (4,) and all(len(b) > 0 for b in tr["image_primary"])
    # has_image_3 false -> no wrist at all; true -> the bytes pass (blankness is judged after decoding)
    assert [all(len(b) == 0 for b in t["image_wrist"]) for t in trajs] == [True, False]
    spec = oxe.get_spec("bridge_dataset")
    try:
        oxe.with_options("bridge_dataset", gripper_relabel="threshold", drop_first_step=False)
        tr = _std(hand_root)[0]
        np.testing.assert_array_equal(tr["action"][:, 6], EXPECTED_THRESHOLD_GRIPPER)
        np.testing.assert_allclose(tr["action"][:, :6], RAW[:, :6])
        with pytest.raises(UserError, match="unknown dataset option 'drop_first'; did you mean 'drop_first_step'"):
            oxe.with_options("bridge_dataset", drop_first=True)
    finally:
        oxe.register(spec, overwrite=True)


def test_episode_reader_camera_validity(hand_root) -> None:
    eps = list(episodes.iter_episodes(episodes.EpisodeSource(hand_root, "bridge_dataset"), 16))
    assert [e.source_id for e in eps] == ["7", "8"]  # int32 episode_metadata/episode_id, as text
    assert all(e.frame_valid.tolist() == [True] * 4 for e in eps)
    np.testing.assert_array_equal(eps[0].frames[0, 0, 0], [120, 120, 120])
    wrist = list(episodes.iter_episodes(episodes.EpisodeSource(hand_root, "bridge_dataset", camera="wrist"), 16))
    # ep0: flag false; ep1: flag true but black frames -> blank-frame detection
    assert [w.frame_valid.tolist() for w in wrist] == [[False] * 4, [False] * 4]
    with pytest.raises(UserError, match=r"no valid frames .* choose another camera"):
        vqgan_data.load_frames(hand_root, ["bridge_dataset"], "train", 16, camera="wrist")
    with pytest.raises(UserError, match="unknown camera 'wirst'; did you mean 'wrist'"):
        next(episodes.iter_episodes(episodes.EpisodeSource(hand_root, "bridge_dataset", camera="wirst"), 16))


# ------------------------------------------------------------------------------------------------ windows
def test_window_helpers_accept_every_field() -> None:
    w = windows.vipra_window(horizon=6, history_offsets=(-1, 0), clip_len=4)
    assert (w.kind, w.horizon, w.history_offsets, w.clip_len) == ("vla", 6, (-1, 0), 4)
    assert windows.lapa_window(horizon=3).horizon == 3
    assert windows.lam_window(kind="lam", clip_len=3).clip_len == 3
    with pytest.raises(TypeError, match="unknown WindowSpec field 'horizn'; did you mean 'horizon'"):
        windows.vipra_window(horizn=6)


# ------------------------------------------------------------------------------------------------ tools on Bridge
def test_vqgan_frames_and_token_cache_on_bridge(bridge_root, tmp_path) -> None:
    frames = vqgan_data.load_frames(bridge_root, ["bridge_dataset"], "train", 16)
    lengths = [6 + i % 3 for i in range(6)]
    assert frames.shape == (sum(n - 1 for n in lengths), 16, 16, 3)  # step 0 dropped (bridge_orig)
    wrist = vqgan_data.load_frames(bridge_root, ["bridge_dataset"], "train", 16, camera="wrist")
    assert len(wrist) == sum(n - 1 for i, n in enumerate(lengths) if fx.bridge_has_image(3, i))
    out = str(tmp_path / "tok.npz")
    fake = lambda x: x[..., ::4, ::4, 0].astype(np.int32)
    info = vqgan_data.cache_image_tokens(fake, bridge_root, ["bridge_dataset"], "train", 16, out, batch_size=8)
    assert info["episodes"] == 6 and info["frames"] == len(frames)
    z = np.load(out)
    assert sorted(z["episode_id"].tolist()) == [str(i) for i in range(6)]  # int32 ids, no .decode() crash
    assert z["valid"].all() and list(z["dataset_name"]) == ["bridge_dataset"]


def test_vqgan_train_reads_bridge_with_camera_option(bridge_root, tmp_path) -> None:
    from configs import vqgan as vqgan_configs
    from latent_pretraining import vqgan_train

    cfg = vqgan_configs.get_config("tiny")
    with cfg.unlocked():
        cfg.data.root, cfg.data.datasets, cfg.data.resolution = bridge_root, ("bridge_dataset",), 16
        cfg.data.val_frames = 4
    assert vqgan_train.val_frames(cfg).shape == (4, 16, 16, 3)
    fp = vqgan_train.data_fingerprint(cfg)
    with cfg.unlocked():
        cfg.data.camera = "wrist"
    assert vqgan_train.data_fingerprint(cfg) != fp


def test_lam_table_on_bridge_needs_no_ground_truth(bridge_root) -> None:
    t = lam_data.load_table(bridge_root, ["bridge_dataset"], "train", with_flow=False, resolution=16)
    assert t.frames.shape[1:] == (16, 16, 3) and not t.has_ground_truth
    assert t.num_steps == sum(5 + i % 3 for i in range(6)) and not t.effector.any()
    batch = next(lam_data.ClipSampler(t, batch_size=4, clip_len=2, offset=1, seed=0))
    assert batch["clip"].shape == (4, 2, 16, 16, 3)
    with pytest.raises(UserError, match=r"no steps/ground_truth/flow .*flow_target='block_match' \(or 'farneback'\)"):
        lam_data.load_table(bridge_root, ["bridge_dataset"], "train", with_flow=True, resolution=16)


def test_lam_label_cache_on_bridge(bridge_root, tmp_path) -> None:
    from test_token_cache import _labeler

    from lam.label import write_cache

    lab, _ = _labeler()
    path = write_cache(lab, bridge_root, "bridge_dataset", "train", str(tmp_path), batch_size=8)
    z = np.load(path)
    assert z["ids"].shape == (sum(5 + i % 3 for i in range(6)), lab.codes)
    ids = {e.tfds_id: e.episode_id for e in episodes.iter_episodes(
        episodes.EpisodeSource(bridge_root, "bridge_dataset"), 16, decode=False)}
    assert dict(zip(z["tfds_id"].tolist(), z["episode_id"][z["episode_start"]].tolist(), strict=True)) == ids


def _raw_leaf(root: str, name: str, key: str) -> np.ndarray:
    return np.concatenate([e.extras[key] for e in episodes.iter_episodes(
        episodes.EpisodeSource(root, name), 0, extras=(key,), decode=False)])


def test_lam_effector_truth_is_in_pixels_of_the_frames_read(tmp_path) -> None:
    """Demo table units and Meta-World's hand pixels both become pixels of the LAM's frames (rescaled with them);
    the demo world's probe inputs are what the old `(table units) * PIXELS_PER_UNIT` evaluation computed."""
    from lam import evaluate

    root = str(tmp_path)
    fx.write_dataset(root, "demo_robot", episodes=2, lengths=(6, 6), res=64, shards=1)
    fx.write_dataset(root, "metaworld_video", episodes=2, lengths=(5, 5), res=32, shards=1)
    table_units = _raw_leaf(root, "demo_robot", lam_data.GT_EFFECTOR)
    hand_pixel = _raw_leaf(root, "metaworld_video", lam_data.GT_HAND_PIXEL)
    for res in (64, 32):
        demo = lam_data.load_table(root, ["demo_robot"], "train", with_flow=False, resolution=res)
        np.testing.assert_allclose(demo.effector, (table_units * 0.92 + 0.04) * res, rtol=1e-5, atol=1e-4)
        mw = lam_data.load_table(root, ["metaworld_video"], "train", with_flow=False, resolution=res)
        assert mw.has_ground_truth and demo.has_ground_truth
        np.testing.assert_allclose(mw.effector, hand_pixel * res / 32, rtol=1e-6)
    # at the demo's own 64 px: the same displacements, direction bins and position bins as the old table-unit code
    demo = lam_data.load_table(root, ["demo_robot"], "train", with_flow=False, resolution=64)
    old_disp, new_disp = (table_units[1:] - table_units[:-1]) * 64 * (1 - 2 * 0.04), np.diff(demo.effector, axis=0)
    np.testing.assert_allclose(new_disp, old_disp, atol=1e-4)
    np.testing.assert_array_equal(evaluate.direction_bins(new_disp), evaluate.direction_bins(old_disp))
    edges = lambda p: (np.quantile(p[:, 0], [0.25, 0.5, 0.75]), np.quantile(p[:, 1], [0.5]))
    np.testing.assert_array_equal(evaluate.position_bins(demo.effector, edges(demo.effector)),
                                  evaluate.position_bins(table_units, edges(table_units)))


# ------------------------------------------------------------------------------------------------ versions, cache keys
def test_configured_version_is_opened_and_cache_key_follows_root(tmp_path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fx.write_dataset(a, "demo_robot", episodes=2, lengths=(4, 4), res=16, shards=1)
    fx.write_dataset(a, "demo_robot", episodes=3, lengths=(5, 5), res=16, shards=1, version="2.0.0")
    fx.write_dataset(b, "demo_robot", episodes=1, lengths=(6, 6), res=16, shards=1)
    t = lam_data.load_table(a, ["demo_robot"], "train", with_flow=False, resolution=16)
    assert t.episode_len.tolist() == [4, 4]  # the registry's 1.0.0, not the latest directory (2.0.0)
    t2 = lam_data.load_table(a, ["demo_robot:2.0.0"], "train", with_flow=False, resolution=16)
    assert t2.episode_len.tolist() == [5, 5, 5] and t2.has_ground_truth
    cache = str(tmp_path / "cache")
    ta = lam_data.load_table(a, ["demo_robot"], "train", with_flow=False, resolution=16, cache_dir=cache)
    tb = lam_data.load_table(b, ["demo_robot"], "train", with_flow=False, resolution=16, cache_dir=cache)
    assert ta.episode_len.tolist() == [4, 4] and tb.episode_len.tolist() == [6]  # not the stale root-a arrays
    assert len(os.listdir(cache)) == 2
    assert lam_data.load_table(b, ["demo_robot"], "train", with_flow=False, resolution=16,
                               cache_dir=cache).episode_len.tolist() == [6]  # and the cache is reused
    src = [episodes.EpisodeSource(a, "demo_robot")]
    assert episodes.fingerprint(src) != episodes.fingerprint([episodes.EpisodeSource(b, "demo_robot")])
    assert episodes.fingerprint(src) != episodes.fingerprint([episodes.EpisodeSource(a, "demo_robot", "2.0.0")])


# ------------------------------------------------------------------------------------------------ mixtures
def test_parse_mixture_entries_and_errors() -> None:
    m = mx.parse_mixture("bridge_dataset@/data/rail:2,demo_robot:1.0.0@/b=0.5,fractal20220817_data:0.1.0,"
                         "demo_human:0.25,ssv2@gs://bucket/x")
    assert [(e.name, e.version, e.root, e.weight) for e in m.entries] == [
        ("bridge_dataset", None, "/data/rail", 2.0), ("demo_robot", "1.0.0", "/b", 0.5),
        ("fractal20220817_data", "0.1.0", None, 1.0), ("demo_human", None, None, 0.25),
        ("ssv2", None, "gs://bucket/x", 1.0)]
    with pytest.raises(UserError) as e:
        mx.parse_mixture("bridg@/a,demo_robot:1.x@/b,demo_human@,demo_robot=-1")
    lines = str(e.value).splitlines()
    assert len(lines) == 4
    assert "did you mean 'bridge'" in lines[0] or "did you mean 'bridge_dataset'" in lines[0]
    assert "version '1.x' is not of the form X.Y.Z" in lines[1]
    assert "empty root after '@'" in lines[2] and "weight '-1' is not a positive number" in lines[3]
    m = mx.mixture_from_lists("x", ["demo_robot@/a", "demo_human@/b:3"], [0.5, 0.5])
    assert [e.weight for e in m.entries] == [0.5, 3.0]  # a weight in the entry wins over data.weights


def test_mixture_across_roots(tmp_path) -> None:
    from data import loader

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fx.write_dataset(a, "demo_robot", episodes=2, lengths=(4, 5), res=16, shards=1)
    fx.write_dataset(b, "bridge_dataset", episodes=2, lengths=(4, 5), res=16, shards=1)
    mix = mx.parse_mixture(f"demo_robot@{a}:1,bridge_dataset@{b}:1")
    with pytest.raises(UserError) as e:  # every member checked up front, one line each
        mx.check_mixture(mx.parse_mixture(f"demo_robot@{b},bridge_dataset:9.9.9@{b}"), "")
    assert len(str(e.value).splitlines()) == 2 and "version '9.9.9' not found" in str(e.value)
    cfg = mx.PipelineConfig(data_root="", window=windows.lam_window(clip_len=2), global_batch_size=8, resolution=16,
                            shuffle_buffer=16, stats_dir=str(tmp_path / "stats"))
    it = loader.make_iterator(mix, cfg, process_index=0, process_count=1)
    seen = set()
    for _ in range(4):
        seen |= set(np.asarray(next(it).dataset_index).tolist())
    assert seen == {0, 1}
    fx.write_dataset(a, "bridge_dataset", episodes=2, lengths=(4, 5), res=16, shards=1)  # same data, other root
    moved = mx.parse_mixture(f"demo_robot@{a}:1,bridge_dataset@{a}:1")
    assert it.data_fingerprint == loader.data_fingerprint(mix, cfg)
    assert loader.data_fingerprint(moved, cfg) != loader.data_fingerprint(mix, cfg)


def test_lam_train_evaluate_label_on_bridge(bridge_root, tmp_path) -> None:
    """lam.train (memory source) -> lam.evaluate -> labels on the Bridge layout (used to be KeyError: 'image')."""
    import math

    from configs import lam as lam_configs
    from lam import evaluate as lam_eval
    from lam import train as lam_train
    from lam.label import Labeler, load_lam, write_cache

    cfg = lam_configs.get_config("lapa_tiny")
    cfg.data.source, cfg.data.root, cfg.data.cache_dir = "memory", bridge_root, str(tmp_path / "cache")
    cfg.data.datasets, cfg.data.weights = ("bridge_dataset",), (1.0,)
    cfg.data.offset, cfg.data.batch_size = 1, 8
    cfg.loss.flow_weight = 1.0
    cfg.loss.flow_target = "ground_truth"
    with pytest.raises(UserError, match=r"flow_target='block_match' \(or 'farneback'\)"):
        lam_train.make_data(cfg)  # Bridge has no ground-truth flow: one line naming the fix
    cfg.loss.flow_target = "farneback"
    cfg.train.total_steps = 2
    cfg.eval.batches, cfg.eval.batch_size = 2, 8
    res = lam_train.train(cfg, str(tmp_path / "run"), overwrite=True)
    assert res.step == 2 and math.isfinite(res.metrics["loss"])
    m = lam_eval.evaluate(str(tmp_path / "run"))
    assert math.isfinite(m["recon/psnr"]) and math.isfinite(m["recon/psnr_copy_last"])
    assert "no ground-truth effector" in m["probe/skipped"] and "probe/direction_acc" not in m
    assert "probes" not in m["plots"] and os.path.exists(m["plots"]["reconstructions"])
    lab = Labeler(*load_lam(str(tmp_path / "run")))
    z = np.load(write_cache(lab, bridge_root, "bridge_dataset", "val", str(tmp_path / "labels")))
    assert len(z["ids"]) == sum(5 + i % 3 for i in range(6))


def test_lam_run_fingerprint_follows_data_and_batch(bridge_root, tmp_path) -> None:
    from configs import lam as lam_configs

    cfg = lam_configs.get_config("lapa_tiny")
    cfg.data.root, cfg.data.datasets, cfg.data.weights = bridge_root, ("bridge_dataset",), (1.0,)
    base = lam_data.config_fingerprint(cfg)
    assert lam_data.config_fingerprint(cfg) == base
    cfg.data.batch_size += 1  # the sampler state is a batch count: resuming with another batch size is refused
    assert lam_data.config_fingerprint(cfg) != base
    cfg.data.batch_size -= 1
    other = str(tmp_path / "copy")
    fx.write_dataset(other, "bridge_dataset", episodes=6, lengths=(6, 8), res=16, splits=("train", "val"), shards=1)
    cfg.data.root = other
    assert lam_data.config_fingerprint(cfg) != base


def test_policy_wrist_valid_uses_flags_and_blank_frames(hand_root, bridge_root, tmp_path) -> None:
    from data import loader

    cfg = mx.PipelineConfig(data_root="", window=windows.WindowSpec(kind="policy", history_offsets=(0,), horizon=2),
                            global_batch_size=8, resolution=16, wrist_resolution=16, shuffle_buffer=8,
                            stats_dir=str(tmp_path / "stats"))
    hand = loader.make_iterator(mx.parse_mixture(f"bridge_dataset@{hand_root}"), cfg, process_index=0,
                                process_count=1)
    # ep0: has_image_3 false; ep1: flag true but black frames -> never a valid wrist view
    assert not any(np.asarray(next(hand).wrist_valid).any() for _ in range(3))
    real = loader.make_iterator(mx.parse_mixture(f"bridge_dataset@{bridge_root}"), cfg, process_index=0,
                                process_count=1)
    assert any(np.asarray(next(real).wrist_valid).any() for _ in range(4))  # episodes 1 and 4 have a wrist camera
