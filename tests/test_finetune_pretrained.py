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
