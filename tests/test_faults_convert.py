"""Fault injection for the converters (issue #22, "converters that refuse"): each bad input of the issue's table is
built here, run through the CLIs, and must give exit status 2, one line on stderr naming the tensor (expected vs
found) and no output directory (or the previous one untouched). Numpy + safetensors only: no torch needed."""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from core.errors import UserError
from latent_pretraining.convert import errors, hf_llama, lwm, vqgan_pickle
from latent_pretraining.convert.checkpoint import load_checkpoint, save_checkpoint
from latent_pretraining.model.llama import random_params
from latent_pretraining.model.llama_config import preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import convert_checkpoint
import convert_vqgan

CFG = preset("debug", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
             initializer_range=0.1, rope_theta=5e7)  # fmt: skip


def tiny_params(cfg=CFG, seed: int = 0) -> dict:
    params = jax.tree.map(np.array, random_params(cfg, seed=seed)["params"])  # writable copies
    params["transformer"]["ln_f"]["kernel"] = np.random.default_rng(seed).normal(1.0, 0.3, 32).astype(np.float32)
    return params


def refused(capsys, argv: list[str], *needles: str, main=convert_checkpoint.main) -> str:
    """Runs a CLI that must refuse: exit 2, exactly one stderr line containing every needle."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


# ----------------------------------------------------------------------------------------------------- from-hf
@pytest.fixture
def hf_dir(tmp_path) -> Path:
    """A consistent 2-layer float32 HF LlamaForCausalLM directory (one safetensors file)."""
    return hf_llama.write_hf_dir(tmp_path / "hf", tiny_params(), CFG)


def edit_config(path: Path, **fields) -> None:
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **fields}))


def edit_tensors(path: Path, **tensors) -> None:
    data = load_file(path / "model.safetensors")
    data.update({k.replace("__", "."): v for k, v in tensors.items()})
    save_file(data, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_consistent_hf_dir_converts(hf_dir, tmp_path) -> None:
    assert convert_checkpoint.main(["from-hf", str(hf_dir), str(tmp_path / "ours")]) == 0
    params, cfg = load_checkpoint(tmp_path / "ours")
    assert cfg == CFG.replace(initializer_range=0.1)
    np.testing.assert_array_equal(params["lm_head"]["kernel"], tiny_params()["lm_head"]["kernel"])


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("hidden64", ("'model.embed_tokens.weight' has shape (64, 32), expected (64, 64)", "hidden_size=64")),
        ("vocab128", ("'model.embed_tokens.weight' has shape (64, 32), expected (128, 32)", "vocab_size=128")),
        ("extra_layer", ("unexpected tensor 'model.layers.2.", "num_hidden_layers=2 (layers 0..1)", "9 unexpected")),
        ("missing_layer", ("'model.layers.2.self_attn.q_proj.weight' is missing", "expected shape (32, 32)",
                           "num_hidden_layers=3")),
        ("norm1", ("'model.layers.0.input_layernorm.weight' has shape (1,), expected (32,)",)),
        ("nan", ("'model.layers.1.mlp.down_proj.weight' (32, 48) has 3 non-finite values",)),
        ("int_dtype", ("'model.norm.weight' has dtype I32, expected one of float32",)),
        ("tied_head_differs", ("tie_word_embeddings=true but 'lm_head.weight' differs",)),
    ],
)
def test_from_hf_refuses_inconsistent_input(hf_dir, tmp_path, capsys, case, needles) -> None:
    if case == "hidden64":
        edit_config(hf_dir, hidden_size=64)
    elif case == "vocab128":
        edit_config(hf_dir, vocab_size=128)
    elif case == "extra_layer":  # a 3-layer export whose config.json says 2
        hf_llama.write_hf_dir(hf_dir, tiny_params(CFG.replace(num_layers=3)), CFG.replace(num_layers=3),
                              overwrite=True)
        edit_config(hf_dir, num_hidden_layers=2)
    elif case == "missing_layer":
        edit_config(hf_dir, num_hidden_layers=3)
    elif case == "norm1":  # would broadcast silently as a scale
        edit_tensors(hf_dir, model__layers__0__input_layernorm__weight=np.ones(1, np.float32))
    elif case == "nan":
        w = load_file(hf_dir / "model.safetensors")["model.layers.1.mlp.down_proj.weight"].copy()
        w[0, :2], w[5, 7] = np.nan, np.inf
        edit_tensors(hf_dir, model__layers__1__mlp__down_proj__weight=w)
    elif case == "int_dtype":
        edit_tensors(hf_dir, model__norm__weight=np.ones(32, np.int32))
    elif case == "tied_head_differs":
        edit_config(hf_dir, tie_word_embeddings=True)
    dst = tmp_path / "ours"
    refused(capsys, ["from-hf", str(hf_dir), str(dst)], "convert_checkpoint from-hf: error:", *needles)
    assert not dst.exists()


def test_refusal_leaves_previous_output_untouched(hf_dir, tmp_path, capsys) -> None:
    dst = tmp_path / "ours"
    save_checkpoint(dst, tiny_params(seed=4), CFG)
    before = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    edit_config(hf_dir, vocab_size=128)
    refused(capsys, ["from-hf", str(hf_dir), str(dst), "--overwrite"], "expected (128, 32)")
    assert {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ours"]  # no staging directory left behind
    refused(capsys, ["from-hf", str(hf_dir), str(dst)], "exists and is not empty", "--overwrite")


# ---------------------------------------------------------------------------------------------------- from-lwm
def lwm_stream(path: Path, drop: tuple[str, ...] = ()) -> Path:
    params = tiny_params()
    for p in drop:
        node = params
        *parents, last = p.split("/")
        for k in parents:
            node = node[k]
        del node[last]
    lwm.write_lwm_params(path, params, dtype="float32")
    return path


LWM_ARGS = ["--head-dim", "8", "--max-seq-len", "2048"]


def test_from_lwm_without_lm_head_needs_the_flag(tmp_path, capsys) -> None:
    src, dst = lwm_stream(tmp_path / "params", drop=("lm_head",)), tmp_path / "ours"
    refused(capsys, ["from-lwm", str(src), str(dst), *LWM_ARGS], "no 'lm_head/kernel'", "--tie-embeddings")
    assert not dst.exists()
    assert convert_checkpoint.main(["from-lwm", str(src), str(dst), *LWM_ARGS, "--tie-embeddings"]) == 0
    assert load_checkpoint(dst)[1].tie_embeddings
    full = lwm_stream(tmp_path / "full")  # a head in the stream contradicts --tie-embeddings
    refused(capsys, ["from-lwm", str(full), str(tmp_path / "o2"), *LWM_ARGS, "--tie-embeddings"], "own 'lm_head")


def test_from_lwm_without_ffn_norm_names_it(tmp_path, capsys) -> None:
    src = lwm_stream(tmp_path / "params", drop=("transformer/h/scan_decoder/ffn_norm",))
    dst = tmp_path / "ours"
    refused(capsys, ["from-lwm", str(src), str(dst), *LWM_ARGS],
            "'transformer/h/scan_decoder/ffn_norm/kernel' is missing (expected shape (2, 32)")
    assert not dst.exists()


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_from_lwm_truncated_stream_is_reported_as_truncated(tmp_path, capsys, cut) -> None:
    src = lwm_stream(tmp_path / "params")
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * cut)])
    dst = tmp_path / "ours"
    err = refused(capsys, ["from-lwm", str(src), str(dst), *LWM_ARGS], "is truncated", "incomplete record")
    assert "KeyError" not in err
    assert not dst.exists()


def test_from_lwm_cut_at_a_record_boundary_names_the_missing_tensor(tmp_path, capsys) -> None:
    from latent_pretraining.convert import msgpack_stream

    full = list(msgpack_stream.iter_stream(lwm_stream(tmp_path / "full")))
    msgpack_stream.write_stream(tmp_path / "cut", full[:-2])  # a clean cut: no partial record left to see
    err = refused(capsys, ["from-lwm", str(tmp_path / "cut"), str(tmp_path / "ours"), *LWM_ARGS], "is missing")
    assert any(f"'{'/'.join(key)}'" in err for key, _ in full[-2:]), err  # names one of the dropped tensors
    assert not (tmp_path / "ours").exists()


def test_from_lwm_refuses_nan_and_mixed_layer_counts(tmp_path, capsys) -> None:
    params = tiny_params()
    params["transformer"]["h"]["scan_decoder"]["attention"]["wv"]["kernel"][1, 3, 4] = np.nan
    lwm.write_lwm_params(tmp_path / "nan", params, dtype="float32")
    refused(capsys, ["from-lwm", str(tmp_path / "nan"), str(tmp_path / "o1"), *LWM_ARGS],
            "'transformer/h/scan_decoder/attention/wv/kernel' (2, 32, 32) has 1 non-finite")
    params = tiny_params()
    w2 = params["transformer"]["h"]["scan_decoder"]["feed_forward"]["w2"]
    w2["kernel"] = w2["kernel"][:1]  # one layer of w2 in a 2-layer stream
    lwm.write_lwm_params(tmp_path / "layers", params, dtype="float32")
    refused(capsys, ["from-lwm", str(tmp_path / "layers"), str(tmp_path / "o2"), *LWM_ARGS],
            "'transformer/h/scan_decoder/feed_forward/w2/kernel' has shape (1, 48, 32), expected (2, 48, 32)")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ------------------------------------------------------------------------------------------------------- to-hf
def test_to_hf_keeps_float32_so_hf_ours_hf_is_exact(hf_dir, tmp_path) -> None:
    assert convert_checkpoint.main(["from-hf", str(hf_dir), str(tmp_path / "ours")]) == 0
    assert convert_checkpoint.main(["to-hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0  # default flags
    assert json.loads((tmp_path / "back" / "config.json").read_text())["torch_dtype"] == "float32"
    a, b = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32 and a[name].tobytes() == b[name].tobytes(), name


def test_to_hf_default_dtype_is_the_checkpoints_own(tmp_path) -> None:
    params = jax.tree.map(lambda x: x.astype(hf_llama.np_dtype("bfloat16")), tiny_params())
    save_checkpoint(tmp_path / "ours", params, CFG.replace(param_dtype="bfloat16"))
    assert convert_checkpoint.main(["to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    assert {v.dtype.name for v in load_file(tmp_path / "hf" / "model.safetensors").values()} == {"bfloat16"}
    assert convert_checkpoint.main(["to-hf", str(tmp_path / "ours"), str(tmp_path / "f32"), "--dtype", "float32"]) == 0
    assert {v.dtype.name for v in load_file(tmp_path / "f32" / "model.safetensors").values()} == {"float32"}


def test_to_hf_refuses_bad_checkpoints_and_keeps_the_output(tmp_path, capsys) -> None:
    params = tiny_params()
    params["transformer"]["wte"]["embedding"][3, 3] = np.nan
    save_checkpoint(tmp_path / "nan", params, CFG)
    refused(capsys, ["to-hf", str(tmp_path / "nan"), str(tmp_path / "hf")], "'transformer/wte/embedding'",
            "1 non-finite")
    assert not (tmp_path / "hf").exists()
    params = tiny_params()
    params["transformer"]["ln_f"]["kernel"] = np.ones(1, np.float32)  # the (1,) norm, stored in our format
    save_checkpoint(tmp_path / "norm", params, CFG)
    refused(capsys, ["to-hf", str(tmp_path / "norm"), str(tmp_path / "hf")],
            "'transformer/ln_f/kernel' has shape (1,), expected (32,)")
    params = tiny_params()
    params["lm_head"]["kernel"][0, 0] = 1e6  # finite in float32, inf in float16
    save_checkpoint(tmp_path / "big", params, CFG)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("previous export")
    refused(capsys, ["to-hf", str(tmp_path / "big"), str(tmp_path / "hf")], "exists and is not empty")
    refused(capsys, ["to-hf", str(tmp_path / "big"), str(tmp_path / "hf"), "--dtype", "float16", "--overwrite"],
            "'lm_head.weight'", "non-finite", "cast to float16")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------------------------- the unpickler
def reference_bomb(levels: int = 60) -> bytes:
    x: list = []
    for _ in range(levels):
        x = [x, x]
    return pickle.dumps({"w": x}, protocol=4)


# A hang guard, not a speed figure: the refusals take well under a second on a quiet machine (0.04 s for the bomb,
# 0.26 s for 100,000-level nesting) but the unguarded unpickler runs for minutes (exponential in the bomb's depth),
# so a generous bound still fails without the limits and does not flake on a loaded 2-core CI machine.
HANG_GUARD_S = 10.0


def timed_refusal(blob: bytes, match: str) -> float:
    start = time.perf_counter()
    with pytest.raises(vqgan_pickle.UnsafePickleError, match=match):
        vqgan_pickle.load_pickled_params(blob)
    return time.perf_counter() - start


@pytest.mark.timeout(60)
def test_shared_reference_bomb_is_refused_at_once(tmp_path, capsys) -> None:
    blob = reference_bomb()
    assert len(blob) < 600  # the 455-byte file: 2**60 paths through 60 shared lists
    assert timed_refusal(blob, "same object as the one at .*shared memo reference") < HANG_GUARD_S
    (tmp_path / "bomb").write_bytes(blob)
    start = time.perf_counter()
    refused(capsys, ["--input", str(tmp_path / "bomb"), "--output", str(tmp_path / "v.safetensors")],
            "convert_vqgan: error:", "shared memo reference", main=convert_vqgan.main)
    assert time.perf_counter() - start < HANG_GUARD_S and not (tmp_path / "v.safetensors").exists()


@pytest.mark.timeout(60)
def test_deep_nesting_and_cycles_are_refused_at_once() -> None:
    levels = 100_000  # too deep for pickle.dumps, so written as opcodes: EMPTY_LIST x n, APPEND x (n - 1)
    deep = b"\x80\x04" + pickle.EMPTY_LIST * levels + pickle.APPEND * (levels - 1) + pickle.STOP
    assert timed_refusal(deep, "nest deeper than 64 levels") < HANG_GUARD_S
    cyc: list = [np.zeros(2)]
    cyc.append(cyc)
    assert timed_refusal(pickle.dumps({"w": cyc}), r"at /w/1 is its own ancestor at /w \(a cycle\)") < HANG_GUARD_S
    d: dict = {}
    d["self"] = d
    assert timed_refusal(pickle.dumps(d), r"at /self is its own ancestor at / \(a cycle\)") < HANG_GUARD_S


class _SharedPayload:
    """Pickles as numpy's protocol-5 array rebuild around one shared bytes object (memoized once, reused)."""

    payload = bytes(4 * 2**16)

    def __reduce__(self):
        from numpy._core.numeric import _frombuffer

        return _frombuffer, (self.payload, np.dtype("float32"), (2**16,), "C")


@pytest.mark.timeout(60)
def test_size_limits() -> None:
    blob = pickle.dumps({f"w{i}": _SharedPayload() for i in range(64)}, protocol=4)
    assert len(blob) < 2**19  # 64 arrays of 256 KiB each from one 256 KiB payload
    assert timed_refusal(blob, "exceed the pickle's own size") < HANG_GUARD_S
    with pytest.raises(vqgan_pickle.UnsafePickleError, match="more than 100 opcodes"):
        vqgan_pickle.load_pickled_params(pickle.dumps({"w": list(range(200))}),
                                         vqgan_pickle.PickleLimits(max_ops=100))
    with pytest.raises(vqgan_pickle.UnsafePickleError, match="over 1000 bytes"):
        vqgan_pickle.load_pickled_params(pickle.dumps({"w": np.zeros(500)}), vqgan_pickle.PickleLimits(max_bytes=1000))
    with pytest.raises(vqgan_pickle.UnsafePickleError, match="truncated or damaged"):
        vqgan_pickle.load_pickled_params(pickle.dumps({"w": np.zeros(50)})[:-20])
    # legitimate sharing-free trees with shared scalar leaves and empty tuples still load
    tree = {"a": np.arange(3.0), "b": (), "c": (), "d": [1, 1], "e": {"f": np.ones((2, 2), np.float32)}}
    got = vqgan_pickle.load_pickled_params(pickle.dumps(tree, protocol=5))
    np.testing.assert_array_equal(got["e"]["f"], tree["e"]["f"])


def test_refusals_are_user_errors() -> None:
    assert issubclass(errors.ConversionError, UserError) and issubclass(errors.ConversionError, ValueError)
    assert issubclass(errors.TruncatedStreamError, errors.ConversionError)
    assert issubclass(errors.OutputExistsError, FileExistsError)
    assert issubclass(vqgan_pickle.UnsafePickleError, UserError)
    assert issubclass(vqgan_pickle.UnsafePickleError, pickle.UnpicklingError)
