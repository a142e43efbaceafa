"""Ahead-of-time compile check (`scripts/benchmark.py compile`) on the debug presets with the 8 fake test devices: the
real train step compiles from abstract shapes and reports memory, FLOPs, shardings and the frozen LAM's per-device
bytes (encoder-only, as the step carries it, vs the whole LAM); a tiny budget fails clearly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import lam as lam_configs
from lam import api as lam_api
from latent_pretraining import compile_check as check_lib
from latent_pretraining.compile_check import MarkerTokenizer, make_mesh, per_device_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compile_check  # scripts/compile_check.py, the entry point


def _nbytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_lapa_debug_compiles_and_reports(capsys, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    assert compile_check.main(["--config", "configs/lapa.py:debug", "--mesh", "tp=2,fsdp=4", "--full-lam",
                               "--json", str(path)]) == 0
    out = capsys.readouterr().out
    rep = json.loads(path.read_text())
    # the LAM bytes are the step's real input: the encoder-only tree the trainer builds (lapa_tiny's arrays are under
    # the fsdp size threshold, so replicated: per device = the whole tree), smaller than the whole LAM, and the step
    # compiled with the whole LAM takes exactly the difference more in its arguments
    full = lam_api.abstract_latent_labeler(lam_configs.get_config("lapa_tiny"))
    encoder = lam_api.encoder_only(full, frame_size=64)[1]
    assert rep["lam_bytes"] == _nbytes(encoder) < _nbytes(full[1]) == rep["lam_full_bytes"]
    assert rep["full_lam_argument_bytes"] - rep["argument_bytes"] == rep["lam_full_bytes"] - rep["lam_bytes"]
    # the arguments XLA counts are the inputs the step reads (lapa's layout never reads the future frame or actions)
    assert rep["argument_bytes"] == rep["input_bytes"] and "[1]['future']" in rep["unused_inputs"]
    assert "frozen LAM per device: encoder-only" in out and "saved" in out and "arguments = the inputs" in out
    assert "mesh dp=1,fsdp=4,tp=2,sp=1 (8 devices)" in out and "global batch 8 x" in out
    assert "per-device memory: total" in out and "temps" in out and "FLOPs per step: model" in out
    # the backbone's scanned q projection: layers unsharded, embed over fsdp, heads over tp
    line = next(x for x in out.splitlines() if "scan_decoder/attention/wq/kernel" in x)
    assert "P(None, 'fsdp', 'tp')" in line
    assert out.strip().splitlines()[-1].startswith("PASS:")


def test_per_device_bytes_counts_shards() -> None:
    mesh = make_mesh({"dp": 1, "fsdp": 8, "tp": 1, "sp": 1}, 8)
    split = jax.ShapeDtypeStruct((16, 4), np.float32, sharding=NamedSharding(mesh, P("fsdp")))
    whole = jax.ShapeDtypeStruct((3,), np.int32, sharding=NamedSharding(mesh, P()))
    assert per_device_bytes({"a": split, "b": whole}) == 2 * 4 * 4 + 3 * 4
    with pytest.raises(ValueError, match="2 arrays but 1 shardings"):
        per_device_bytes([split, whole], [split.sharding])


def test_executed_flops_extrapolate_unrolled_layers() -> None:
    """XLA counts a scanned layer once; executed_flops (unrolled at 1 and 2 layers, extrapolated) equals the count of
    the step unrolled at 3 layers (FLOPs linear in the layers), with no model loop left in its compiles."""
    config = compile_check.load_config("configs/lapa.py:debug")
    config.model.llama.num_layers = 3
    build_setup, _ = check_lib.abstract_builder(lam_configs.get_config("lapa_tiny"),
                                                resolution=config.data.resolution, tiny_vqgan=True)
    mesh = make_mesh(compile_check.parse_mesh("fsdp=8"), 8)
    executed, loops_left = check_lib.executed_flops(config, build_setup, mesh)
    config.model.llama.scan_layers = False
    direct = check_lib.compile_train_step(build_setup(config), mesh, top=0)
    assert loops_left == 0 == direct.while_loops
    assert executed == pytest.approx(direct.xla_flops * direct.devices, rel=1e-6)


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
