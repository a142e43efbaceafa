"""Ahead-of-time compile check (`scripts/benchmark.py compile`) on the debug presets with the 8 fake test devices: the
real train step compiles from abstract shapes and reports memory, FLOPs and shardings; a tiny budget fails clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import pytest

from latent_pretraining.compile_check import MarkerTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compile_check  # scripts/compile_check.py, the entry point


def test_lapa_debug_compiles_and_reports(capsys) -> None:
    assert compile_check.main(["--config", "configs/lapa.py:debug", "--mesh", "tp=2,fsdp=4"]) == 0
    out = capsys.readouterr().out
    assert "mesh dp=1,fsdp=4,tp=2,sp=1 (8 devices)" in out and "global batch 8 x" in out
    assert "per-device memory: total" in out and "temps" in out and "FLOPs per step: model" in out
    # the backbone's scanned q projection: layers unsharded, embed over fsdp, heads over tp
    line = next(x for x in out.splitlines() if "scan_decoder/attention/wq/kernel" in x)
    assert "P(None, 'fsdp', 'tp')" in line
    assert out.strip().splitlines()[-1].startswith("PASS:")


def test_vipra_debug_fails_a_tiny_budget_with_a_clear_message(capsys) -> None:
    rc = compile_check.main(["--config", "configs/vipra.py:debug", "--mesh", "fsdp=8", "--budget-gib", "0.001"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "remat none" in captured.out and "FAIL:" in captured.out
    err = captured.err
    assert "does NOT fit on mesh dp=1,fsdp=8,tp=1,sp=1 (8 devices)" in err and "budget 0.001 GiB" in err
    assert "GiB = arguments" in err and "grad_accum_steps=2" in err and "remat=nothing_saveable" in err


def test_arguments_are_validated() -> None:
    assert compile_check.parse_mesh("tp=2,fsdp=4") == {"dp": 1, "fsdp": 4, "tp": 2, "sp": 1}
    with pytest.raises(ValueError, match="axis=size"):
        compile_check.parse_mesh("model=8")
    with pytest.raises(RuntimeError, match="xla_force_host_platform_device_count=16"):
        compile_check.main(["--config", "configs/lapa.py:debug", "--mesh", "fsdp=16"])
    with pytest.raises(KeyError, match="unknown config field"):
        compile_check.main(["--config", "configs/lapa.py:debug", "--set", "train.optimizer.grad_acum=2"])
    assert jax.device_count() == 8
    tok = MarkerTokenizer(32000)
    assert len(tok.encode(" </vision> <delta>")) == 6 and all(3 <= i < 32000 for i in tok.encode("</delta>"))
