"""The pipeline on the real demo-world datasets written by data/demo."""

from __future__ import annotations

import numpy as np
import pytest

from configs import mixtures
from data import loader, windows
from data import mixture as mx
from data.demo import writer


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("demo_data"))
    writer.write_datasets(root, writer.GenerationConfig(episodes=4, val_episodes=2, resolution=64, num_shards=2),
                          progress=False)
    return root


def test_demo_mixture_vipra_and_lam(demo_root, tmp_path) -> None:
    cfg = mx.PipelineConfig(data_root=demo_root, window=windows.vipra_window(), global_batch_size=32, resolution=64,
                            shuffle_buffer=256, stats_dir=str(tmp_path))
    it = loader.make_iterator(mixtures.get_mixture("demo"), cfg, process_index=0, process_count=1)
    stats = it.statistics
    assert stats["demo_robot"]["num_action_transitions"] > 0 and stats["demo_human"]["num_action_transitions"] == 0
    for _ in range(3):
        b = next(it)
        assert b.history.shape == (32, 2, 64, 64, 3) and b.future.shape == (32, 64, 64, 3)
        human, robot = b.dataset_index == 1, b.dataset_index == 0
        assert not b.action_valid[human].any() and not b.action_pad_mask[human].any()
        real = b.actions[robot][b.action_pad_mask[robot]]
        np.testing.assert_array_equal(real[:, 2:6], 0.0)  # planar robot: normalized zero dims stay 0 (std 0)
        np.testing.assert_array_equal(real[:, 6], 1.0)  # gripper raw, open
        assert all(len(s) > 0 for s in b.language)
        assert b.history.std() > 1.0  # real rendered frames, not padding
    lam_cfg = mx.PipelineConfig(data_root=demo_root, window=windows.lam_window(clip_len=8), global_batch_size=16,
                                resolution=64, shuffle_buffer=128, stats_dir=str(tmp_path), split="val")
    lam = next(loader.make_iterator(mixtures.get_mixture("demo"), lam_cfg, process_index=0, process_count=1))
    assert lam.clip.shape == (16, 8, 64, 64, 3) and lam.clip_valid[:, 0].all()
