"""LWM VQGAN pickle import: synthetic params pickles load exactly; malicious pickles are refused without running."""

from __future__ import annotations

import os
import pickle

import jax
import numpy as np
import pytest

from latent_pretraining.convert import vqgan_pickle
from latent_pretraining.model import vqgan

TINY = vqgan.VQGANConfig(resolution=8, hidden_channels=4, channel_mult=(1, 2), num_res_blocks=1, z_channels=4,
                         num_embeddings=8, embed_dim=3, num_groups=2)


@pytest.fixture(scope="module")
def np_params():
    return jax.tree.map(np.asarray, jax.device_get(vqgan.init_params(TINY, 1)))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_synthetic_pickle_converts_exactly(np_params, tmp_path, protocol) -> None:
    src = tmp_path / "vqgan"
    src.write_bytes(pickle.dumps(np_params, protocol=protocol))  # what LWM's file is: a pickled params tree
    out = str(tmp_path / "vqgan.safetensors")
    _, params = vqgan_pickle.convert(str(src), out, config=TINY,
                                     orbax_dir=str(tmp_path / "orbax") if protocol == 4 else None)
    jax.tree.map(np.testing.assert_array_equal, params, np_params)
    cfg2, loaded = vqgan.load_tokenizer(out)
    assert cfg2 == TINY
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    ids = vqgan.encode(np_params, frames, config=TINY)
    np.testing.assert_array_equal(vqgan.encode(loaded, frames, config=TINY), ids)
    np.testing.assert_array_equal(vqgan.decode(loaded, ids, config=TINY), vqgan.decode(np_params, ids, config=TINY))
    if protocol == 4:
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ck:
            restored = ck.restore(str(tmp_path / "orbax"))
        jax.tree.map(np.testing.assert_array_equal, restored, np_params)


def test_existing_outputs_are_refused_before_reading_unless_overwrite(np_params, tmp_path, capsys,
                                                                      monkeypatch) -> None:
    """--output was replaced without asking, and an existing --orbax directory failed (orbax traceback) after it."""
    from core import cli
    from scripts import convert_vqgan

    src, out, orbax_dir = tmp_path / "vqgan", tmp_path / "v.safetensors", tmp_path / "orbax"
    src.write_bytes(pickle.dumps(np_params))
    out.write_bytes(b"earlier")
    orbax_dir.mkdir()
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    for argv, what in ((["--output", str(out)], "output file"), (["--orbax", str(orbax_dir)], "orbax directory"),
                       (["--output", str(tmp_path / "new.safetensors"), "--orbax", str(orbax_dir)], "orbax")):
        assert convert_vqgan.main(["--input", str(src), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"convert_vqgan: error: the {what}") and "--overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == b"earlier" and not (tmp_path / "new.safetensors").exists()
    monkeypatch.setenv(cli.DEBUG_ENV, "1")  # README: the full traceback on request, same one line and status
    assert convert_vqgan.main(["--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1].startswith("convert_vqgan: error: the output file")
    vqgan_pickle.convert(str(src), str(out), orbax_dir=str(orbax_dir), config=TINY, overwrite=True)
    jax.tree.map(np.testing.assert_array_equal, vqgan.load_tokenizer(str(out))[1], np_params)
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ck:
        jax.tree.map(np.testing.assert_array_equal, ck.restore(str(orbax_dir)), np_params)


def test_wrapped_scalars_and_fortran_arrays(np_params) -> None:
    tree = {"params": np_params, "meta": {"lr": np.float32(0.5), "steps": [1, 2], "f": np.asfortranarray(
        np.arange(6.0).reshape(2, 3)), "be": np.arange(3, dtype=">i4")}}
    for proto in (2, 5):
        got = vqgan_pickle.load_pickled_params(pickle.dumps(tree, protocol=proto))
        assert got["meta"]["lr"] == np.float32(0.5)
        np.testing.assert_array_equal(got["meta"]["f"], tree["meta"]["f"])
        np.testing.assert_array_equal(got["meta"]["be"], [0, 1, 2])


def test_jax_array_and_frozendict_pickles_become_numpy(np_params) -> None:
    from flax.core import FrozenDict

    tree = FrozenDict({"w": jax.numpy.arange(4.0)})
    got = vqgan_pickle.load_pickled_params(pickle.dumps(tree))
    assert type(got) is dict and isinstance(got["w"], np.ndarray)
    np.testing.assert_array_equal(got["w"], np.arange(4.0))


class _System:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


class _Eval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        import builtins

        return builtins.eval, (self.code,)


def test_malicious_pickles_are_refused_without_side_effects(tmp_path) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        "posix.system": {"w": np.zeros(2), "x": _System(f"touch {marker}")},
        "builtins.eval": [_Eval(f"open({str(marker)!r}, 'w').write('x')")],
    }
    for name, obj in payloads.items():
        blob = pickle.dumps(obj, protocol=4)
        with pytest.raises(vqgan_pickle.UnsafePickleError, match=f"refused to load global '{name}'"):
            vqgan_pickle.load_pickled_params(blob)
        assert not marker.exists()
    src = tmp_path / "evil"
    src.write_bytes(pickle.dumps(_System(f"touch {marker}")))
    with pytest.raises(vqgan_pickle.UnsafePickleError, match=r"posix\.system"):
        vqgan_pickle.convert(str(src), str(tmp_path / "out.safetensors"), config=TINY)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_object_arrays_and_other_numpy_globals_are_refused() -> None:
    with pytest.raises(vqgan_pickle.UnsafePickleError, match="refused numpy dtype 'O8'"):
        vqgan_pickle.load_pickled_params(pickle.dumps({"w": np.array([1, "a"], dtype=object)}))
    # a real numpy function that is not in the allow-list (could read arbitrary files)
    blob = pickle.dumps({"w": np.zeros(1)}, protocol=2).replace(b"numpy\nndarray", b"numpy\nfromfile")
    with pytest.raises(vqgan_pickle.UnsafePickleError, match=r"numpy\.fromfile"):
        vqgan_pickle.load_pickled_params(blob)


def test_shape_mismatch_is_reported_before_writing(np_params, tmp_path) -> None:
    bad = dict(np_params, quantize={"embeddings": np.zeros((9, 3), np.float32)})
    out = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match=r"quantize/embeddings' has shape \(9, 3\), expected \(8, 3\)"):
        vqgan_pickle.convert(pickle.dumps(bad), str(out), config=TINY)
    assert not out.exists()
