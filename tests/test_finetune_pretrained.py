"""`policy.finetune.use_pretrained`: a pretrained run whose recorded VQGAN path cannot be found from the current
directory is refused in one line naming the run and the path (runs trained before the path was recorded absolute
stored it relative to the directory they were trained in)."""

from __future__ import annotations

import json

import ml_collections
import pytest

from core.errors import UserError
from policy import finetune


def _assets(vq_path: str) -> dict[str, bytes]:
    return {"tokenizer.model": b"not a real tokenizer", "video_llama.json": b"{}",
            "frozen.json": json.dumps({"vqgan": {"path": vq_path}, "lam": {}}).encode()}


def test_a_missing_recorded_vqgan_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(finetune, "read_assets", lambda directory: _assets("runs/demo/vqgan/tokenizer.safetensors"))
    config = ml_collections.ConfigDict({"text": {"tokenizer": ""}, "vision": {"tokenizer": ""},
                                        "init": {"checkpoint": ""}})
    with pytest.raises(UserError, match=r"records its VQGAN at 'runs/demo/vqgan/tokenizer\.safetensors', which does "
                                        r"not exist from .*run from the directory it was trained in"):
        finetune.use_pretrained(config, str(tmp_path / "pre" / "vipra"), weights=False)
    assert config.vision.tokenizer == config.text.tokenizer == ""  # refused before anything was applied


def test_the_closed_loop_test_plays_the_world_the_demos_came_from(tmp_path, capsys) -> None:
    """policy.eval_episodes ran in the default demo world (5 task families, 64 px) whatever the demos were: a fine-tune
    on two families, or on Meta-World demos, was scored on tasks it never saw."""
    from configs import policy as policy_configs
    from policy import evaluate
    from policy.evaluate import default_world_config

    demo = tmp_path / "demo" / "demo_robot" / "1.0.0"
    demo.mkdir(parents=True)
    (demo / "generation.json").write_text(json.dumps({"tasks": ["touch_block", "push_direction"], "resolution": 128}))
    config = policy_configs.get_config("vipra_demo")
    config.data.root = str(tmp_path / "demo")
    world, cfg = finetune.closed_loop_world(config)
    assert world == "demo" and cfg.tasks == ("touch_block", "push_direction") and cfg.resolution == 128
    assert cfg != default_world_config()
    assert evaluate.trained_world(config) == (world, cfg)  # policy.evaluate --checkpoint without --world / --data
    gone = config.copy_and_resolve_references()
    gone.data.root = str(tmp_path / "moved")
    assert evaluate.trained_world(gone) == ("demo", None)  # its data moved: the default world, with a note
    assert "the checkpoint's training world is unknown" in capsys.readouterr().out
    meta = tmp_path / "mw" / "metaworld_robot" / "1.0.0"
    meta.mkdir(parents=True)
    (meta / "generation.json").write_text(json.dumps({"robot_tasks": ["reach-v3", "push-v3"]}))
    config.data.root, config.data.datasets = str(tmp_path / "mw"), ("metaworld_robot",)
    world, cfg = finetune.closed_loop_world(config)
    assert world == "metaworld" and cfg.tasks == ("reach-v3", "push-v3")
    config.data.datasets = ("bridge_dataset",)
    with pytest.raises(UserError, match=r"needs a simulated world.*policy\.eval_episodes=0"):
        finetune.closed_loop_world(config)
