"""EasyLM/LWM streaming msgpack -> ours, on files written by the test with flax's own ``to_bytes`` (the format's
writer), scanned and unscanned stacks, chunked large arrays, train-state prefixes and VideoLLaMA extras."""

import sys
from pathlib import Path

import flax.serialization
import jax
import ml_dtypes
import msgpack
import numpy as np
import pytest

from latent_pretraining.convert import lwm, msgpack_stream
from latent_pretraining.convert.checkpoint import flatten, load_checkpoint, set_scan_layout_np
from latent_pretraining.model.llama import random_params
from latent_pretraining.model.llama_config import preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import convert_checkpoint

CFG = preset(
    "debug", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
    initializer_range=0.1, rope_theta=5e7,
)  # fmt: skip
BF16 = ml_dtypes.bfloat16


def lwm_tree(scan: bool) -> dict:
    """Our params plus LWM-style extras, as the LWM file would lay them out (tables under transformer/)."""
    params = jax.tree.map(np.asarray, random_params(CFG, seed=5)["params"])
    rng = np.random.default_rng(1)
    t = params["transformer"]
    t["vte"] = {"embedding": rng.normal(size=(20, 32)).astype(np.float32)}
    t["dte"] = {"embedding": rng.normal(size=(8, 32)).astype(np.float32)}
    params["vision_head"] = {"kernel": rng.normal(size=(32, 20)).astype(np.float32)}
    params["delta_head"] = {"kernel": rng.normal(size=(32, 8)).astype(np.float32)}
    return set_scan_layout_np(params, scan)


def write_easylm_stream(path: Path, tree: dict, prefix: tuple = ()) -> None:
    """What EasyLM's StreamingCheckpointer does: pack (key tuple, to_bytes(bf16 tensor)) pairs one by one."""
    with path.open("wb") as f:
        packer = msgpack.Packer()
        for key, value in flatten(tree).items():
            f.write(packer.pack(((*prefix, *key), flax.serialization.to_bytes(value.astype(BF16)))))


@pytest.mark.parametrize(("file_scan", "our_scan"), [(True, True), (False, True), (True, False)])
def test_from_lwm_keeps_weights_and_extras(tmp_path, monkeypatch, file_scan, our_scan):
    monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 2048)  # force the chunked encoding on big tensors
    tree = lwm_tree(file_scan)
    src = tmp_path / "params"
    write_easylm_stream(src, tree, prefix=("params", "params") if not file_scan else ())
    args = ["from-lwm", str(src), str(tmp_path / "ours"), "--head-dim", "8", "--max-seq-len", "2048"]
    assert convert_checkpoint.main(args + ([] if our_scan else ["--no-scan"])) == 0
    params, cfg = load_checkpoint(tmp_path / "ours")
    assert cfg == CFG.replace(scan_layers=our_scan, initializer_range=0.02)  # init range is not stored
    expected = set_scan_layout_np(lwm_tree(file_scan), our_scan)
    t = expected["transformer"]
    expected["vte"], expected["dte"] = t.pop("vte"), t.pop("dte")  # extra tables move to the top level
    got, want = flatten(params), flatten(expected)
    assert sorted(got) == sorted(want)
    model_shapes = flatten(jax.eval_shape(lambda: random_params(cfg))["params"])  # the model loads this layout
    assert {k: v.shape for k, v in model_shapes.items()} == {k: got[k].shape for k in model_shapes}
    for key, value in want.items():
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], value.astype(BF16).astype(np.float32), err_msg="/".join(key))


def test_encoder_matches_flax_both_ways(monkeypatch):
    monkeypatch.setattr(msgpack_stream, "_MAX_CHUNK_BYTES", 64)
    monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 64)
    for arr in [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((5, 7), BF16), np.int32(3), np.arange(100.0)]:
        ours = msgpack_stream.encode_value(np.asarray(arr))
        back = flax.serialization.msgpack_restore(ours)
        np.testing.assert_array_equal(np.asarray(back), arr)
        np.testing.assert_array_equal(msgpack_stream.decode_value(flax.serialization.to_bytes(np.asarray(arr))), arr)


def test_write_lwm_round_trip_and_errors(tmp_path):
    params = lwm_tree(True)
    params["vte"] = params["transformer"].pop("vte")
    lwm.write_lwm_params(tmp_path / "p", params, dtype="float32")
    keys = [k for k, _ in msgpack_stream.iter_stream(tmp_path / "p")]
    assert ("transformer", "vte", "embedding") in keys and ("vision_head", "kernel") in keys
    back, cfg = lwm.load_lwm(tmp_path / "p", head_dim=8)
    assert cfg.num_layers == 3 and cfg.kv_heads == 4
    np.testing.assert_array_equal(back["vte"]["embedding"], params["vte"]["embedding"])
    with pytest.raises(ValueError, match="config does not match the checkpoint"):
        lwm.load_lwm(tmp_path / "p", config=CFG.replace(num_layers=2), head_dim=8)
    (tmp_path / "bad").write_bytes(msgpack.packb({"not": "a pair"}))
    with pytest.raises(ValueError, match=r"expected a \[key path, to_bytes\(tensor\)\] pair"):
        list(msgpack_stream.iter_stream(tmp_path / "bad"))
