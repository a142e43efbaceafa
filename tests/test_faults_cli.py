"""CLI fault injection (issue 22, one-line errors): real entry points run as subprocesses with bad input must exit 2
with exactly one non-empty stderr line naming what was wrong and what was expected; `--debug` or LATENT_VLA_DEBUG=1
adds the traceback. Every failure here happens while parsing flags or opening inputs, before JAX compiles anything.
The in-process tests cover core.cli's pieces (field suggestions, --debug stripping, which errors are the user's)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from core import cli
from core.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args: list[str], *, debug_env: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    if debug_env:
        env[cli.DEBUG_ENV] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _one_line(p: subprocess.CompletedProcess) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr
    return lines[0]


def _traceback(p: subprocess.CompletedProcess, expected: str) -> None:
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback (most recent call last)" in p.stderr and expected in p.stderr.splitlines()[-1]


VIPRA = ["-m", "latent_pretraining.train", "--config=configs/vipra.py:demo", "--workdir=/nonexistent/never_written"]


def test_config_typo_suggests_closest_field() -> None:
    args = [*VIPRA, "--config.train.lerning_rate=1"]
    line = _one_line(_run(args))
    assert line.startswith("latent_pretraining.train: error: unknown config field 'train.lerning_rate'; "
                           "did you mean 'train.optimizer.lr'?")
    assert "fields of 'train': checkpoint, distributed" in line  # what can be written there
    _traceback(_run(args, debug_env=True), "did you mean 'train.optimizer.lr'?")


def test_config_wrong_type_and_bad_preset_lam_and_vipra() -> None:
    line = _one_line(_run(["-m", "lam.train", "--config=configs/lam.py:lapa_demo", "--workdir=/nonexistent/x",
                           "--config.train.total_steps=abc"]))
    assert "bad value 'abc' for config field 'train.total_steps': expected int" in line
    args = ["-m", "latent_pretraining.train", "--config=configs/vipra.py:dmo", "--workdir=/nonexistent/x"]
    line = _one_line(_run(args))
    assert "cannot load --config=configs/vipra.py:dmo: unknown ViPRA preset 'dmo'; did you mean 'demo'?" in line
    _traceback(_run([*args, "--debug"]), "did you mean 'demo'?")  # --debug is taken out before absl sees it


def test_missing_config_file_and_missing_config_flag() -> None:
    args = ["-m", "policy.finetune", "--config=configs/polcy.py:vipra_demo", "--workdir=/nonexistent/x"]
    line = _one_line(_run(args))
    assert "unknown config file 'configs/polcy.py'; did you mean 'configs/policy.py'?" in line
    line = _one_line(_run(["-m", "policy.finetune", "--workdir=/nonexistent/x"]))
    assert "missing --config: expected e.g. configs/policy.py:vipra_demo" in line


def test_missing_inputs_in_data_tools(tmp_path) -> None:
    args = ["scripts/label_latent_actions.py", f"--lam={tmp_path / 'no_lam'}", f"--data-root={tmp_path / 'no_data'}",
            "--datasets=demo_robot", f"--out={tmp_path / 'labels'}"]
    line = _one_line(_run(args))
    assert "no checkpoints/ in" in line and "train a LAM there first" in line
    _traceback(_run(args, debug_env=True), "train a LAM there first")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = _one_line(_run(["scripts/make_demo_data.py", f"--out={blocker / 'data'}", "--episodes=1", "--quiet"]))
    assert str(blocker) in line and not (tmp_path / "a_file" / "data").exists()


def test_inconsistent_config_and_a_wrong_tokenizer_file_are_one_line(tmp_path) -> None:
    """Checks against the rest of the config or the inputs (core.errors.InvalidInput) and a tokenizer path that names
    another kind of file used to end in a traceback (plain ValueError, safetensors' SafetensorError)."""
    base = ["-m", "latent_pretraining.train", "--config=configs/lapa.py:debug", f"--workdir={tmp_path / 'run'}",
            "--config.latent.lam_workdir="]
    line = _one_line(_run([*base, "--config.text.tokenizer="]))
    assert line.startswith("latent_pretraining.train: error: config.text.tokenizer is empty")
    not_vqgan = tmp_path / "vqgan.pkl"  # e.g. LWM's pickle given where the converted file belongs
    not_vqgan.write_bytes(b"\x80\x04" + bytes(64))
    p = _run([*base, f"--config.text.tokenizer={tmp_path / 'tok.model'}", f"--config.vision.tokenizer={not_vqgan}"])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]  # (a log line: the demo tokenizer)
    assert f"error: {not_vqgan} is not a safetensors file" in p.stderr.splitlines()[-1]
    assert "expected a VQGAN tokenizer" in p.stderr.splitlines()[-1] and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- in-process pieces
def _config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "train": {"total_steps": 10, "seed": 0, "optimizer": {"lr": 1e-3, "weight_decay": 0.1, "init_lr": 0.0}},
        "data": {"batch_size": 8, "root": ""},
    })


@pytest.mark.parametrize("typo, meant", [
    ("train.lerning_rate", "train.optimizer.lr"),  # typo of a spelled-out name whose field is its abbreviation
    ("train.lr", "train.optimizer.lr"),  # right leaf, wrong section
    ("trian.seed", "train.seed"),
    ("data.batch_sise", "data.batch_size"),
    ("train.optimizer.wd", "train.optimizer.weight_decay"),
    ("train.optimzer", "train.optimizer"),  # sections are fields too
    ("train.optimizer.init_l", "train.optimizer.init_lr"),
])
def test_closest_field(typo: str, meant: str) -> None:
    fields = list(cli.field_paths(_config()))
    assert cli.closest_field(typo, fields) == meant
    assert cli.closest_field("model.vision.zzz_qqq", fields) is None  # nothing close: no guess
    assert cli.unknown_field(typo, _config()).startswith(f"unknown config field {typo!r}; did you mean {meant!r}?")


def test_pop_debug_keeps_child_arguments() -> None:
    assert cli.pop_debug(["--debug", "--x=1"]) == (["--x=1"], True)
    assert cli.pop_debug(["--x=1", "--", "python", "-m", "m", "--debug"]) == (["--x=1", "--", "python", "-m", "m",
                                                                               "--debug"], False)


def test_call_maps_only_user_errors(capsys, monkeypatch) -> None:
    from data.rlds import DataError

    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)

    def bad_data() -> None:
        raise DataError("no dataset at '/d/x/1.0.0'\nexpected <root>/<name>/<version>")

    assert cli.call(bad_data) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("error: no dataset at '/d/x/1.0.0' expected <root>/<name>/<version>\n")
    assert cli.call(lambda: open("/nonexistent/file.json")) == 2  # noqa: SIM115 - it never opens
    assert "No such file or directory: '/nonexistent/file.json'" in capsys.readouterr().err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.call(bad_data) == 2 and "Traceback (most recent call last)" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug keeps Python's own traceback
        cli.call(lambda: 1 / 0)
    assert cli.call(lambda: {"metrics": 1}) == 0 and cli.call(lambda: 3) == 3 and cli.call(lambda: None) == 0


def test_default_xla_flags_added_unless_named() -> None:
    env = {}
    cli.default_xla_flags(env)
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=false"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    cli.default_xla_flags(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 --xla_gpu_enable_triton_gemm=false"
    env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}  # the user's value wins
    cli.default_xla_flags(env)
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=true"
    env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm_any=true"}  # another flag whose name starts the same
    cli.default_xla_flags(env)
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm_any=true --xla_gpu_enable_triton_gemm=false"


def test_entry_points_create_no_jax_backend_at_import() -> None:
    """A JAX computation at import (e.g. a jnp constant) would start the backend before `core.cli.run` sets the XLA
    flags and before a multi-host run's jax.distributed.initialize: importing the entry points must not do that."""
    mods = ["latent_pretraining.train", "latent_pretraining.vqgan_train", "lam.train", "lam.evaluate",
            "policy.finetune", "policy.evaluate", "policy.serve", "latent_pretraining.vla_benchmark"]
    code = ("import importlib, sys\nsys.path.insert(0, 'scripts')\n"
            + "".join(f"importlib.import_module({m!r})\n" for m in mods)
            + "from jax._src import xla_bridge\nprint(sorted(xla_bridge._backends))")
    p = _run(["-c", code], timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout[-500:]


def test_caches_already_written_are_refused_before_any_work_unless_overwrite(tmp_path) -> None:
    """label_latent_actions --out and cache_image_tokens --output replaced earlier caches without asking."""
    from scripts import cache_image_tokens, label_latent_actions

    labels = tmp_path / "labels" / "demo_robot"
    labels.mkdir(parents=True)
    (labels / "val.npz").write_bytes(b"earlier")
    args = ["--lam", str(tmp_path / "no_lam"), "--data-root", str(tmp_path), "--datasets", "demo_robot,demo_human",
            "--splits", "train,val", "--out", str(tmp_path / "labels")]
    with pytest.raises(UserError, match=r"already holds .*demo_robot/val\.npz: pass --overwrite"):
        label_latent_actions.main(args)
    with pytest.raises(FileNotFoundError, match="no checkpoints/ in"):  # past the check: the LAM is read next
        label_latent_actions.main([*args, "--overwrite"])
    tokens = tmp_path / "tokens.npz"
    tokens.write_bytes(b"earlier")
    args = ["--tokenizer", str(tmp_path / "no_tokenizer.safetensors"), "--output", str(tokens)]
    with pytest.raises(UserError, match=r"tokens\.npz already exists: pass --overwrite"):
        cache_image_tokens.main(args)
    with pytest.raises(FileNotFoundError, match="VQGAN tokenizer file"):
        cache_image_tokens.main([*args, "--overwrite"])
    assert (labels / "val.npz").read_bytes() == tokens.read_bytes() == b"earlier"
