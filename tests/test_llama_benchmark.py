"""The ``scripts/benchmark.py`` dispatcher and a tiny ``train-step`` run (the real figures come from the script)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark


def test_dispatcher_and_tiny_train_step(capsys):
    assert benchmark.main(["no-such-benchmark"]) == 2
    assert "unknown benchmark 'no-such-benchmark'" in capsys.readouterr().err
    for entry in benchmark.SUBCOMMANDS.values():
        assert ":" in entry, f"SUBCOMMANDS entries are 'module:function', got {entry!r}"
    args = ["--hidden", "32", "--layers", "1", "--heads", "2", "--ffn", "64", "--vocab", "64", "--seq", "16"]
    args += ["--batch", "2", "--steps", "1", "--no-hf", "--peak-size", "128", "--attention-chunk", "8"]
    assert benchmark.main(["train-step", *args]) == 0
    out = capsys.readouterr().out
    assert "RESULT model_flops_per_s / matmul_peak" in out
    with pytest.raises(SystemExit):  # HF alone and no HF at once: refused by the parser
        benchmark.main(["train-step", "--small", "--hf-only", "--no-hf"])
    assert "--hf-only times the HF LLaMA step alone" in capsys.readouterr().err


def test_step_table_drops_a_failing_variant_and_reports_wall_fraction(capsys):
    from latent_pretraining.training import step_table

    def boom() -> None:
        raise MemoryError("CUDA out of memory\nsecond line")

    variants = [step_table.Variant("ours", lambda: None, 1e6), step_table.Variant("hf", boom, 1e6),
                step_table.matmul_variant(64)]
    results = step_table.measure(variants, rounds=1, steps=1)
    assert [r.variant.name for r in results] == ["ours", "matmul 64^3"]
    assert "hf: dropped, its first step failed: MemoryError: CUDA out of memory" in capsys.readouterr().out
    table = step_table.format_table(results)
    assert "fraction of peak (wall)" in table and table.count("\n| ") == 2


def test_datasheet_peaks() -> None:
    from latent_pretraining.training.step_table import datasheet_flops

    assert datasheet_flops("NVIDIA H200", "bfloat16") == 989.4e12
    assert datasheet_flops("NVIDIA H100 80GB HBM3", "float16") == 989.4e12
    assert datasheet_flops("TPU v5 lite", "bfloat16") == 197e12
    assert datasheet_flops("NVIDIA H200", "float32") == 0.0  # only half-precision peaks are listed
    assert datasheet_flops("cpu", "bfloat16") == 0.0


@pytest.mark.slow
def test_gpu_checks_script_runs_with_tiny_shapes(tmp_path):
    """scripts/gpu_checks.sh end to end in its tiny-shape mode (CPU): every check runs and leaves its log."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GPU_CHECKS_SMALL": "1", "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    p = subprocess.run(["bash", str(root / "scripts" / "gpu_checks.sh"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "gpu_checks: 0 failed" in p.stdout
    assert "RESULT model_flops_per_s" in (tmp_path / "train_step_1b.log").read_text()
    assert "| hf |" in (tmp_path / "train_step_1b_hf.log").read_text()
    assert "speed-up" in (tmp_path / "sampler_7b.log").read_text()
    assert "| category | ms | share |" in (tmp_path / "xplane.log").read_text()


def test_profile_and_xplane_summary(tmp_path, capsys):
    """train-step --profile writes a trace; `benchmark.py xplane` summarizes it by category and op."""
    args = ["--small", "--no-hf", "--rounds", "1", "--steps", "1", "--profile", str(tmp_path)]
    assert benchmark.main(["train-step", *args]) == 0
    assert "profile: 2 steps of 'ours' traced" in capsys.readouterr().out
    assert benchmark.main(["xplane", str(tmp_path), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "plane /host:CPU:" in out and "| category | ms | share |" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) >= 6  # >= 1 category row and the 5 top ops
    with pytest.raises(FileNotFoundError, match=r"no \*\.xplane\.pb under"):
        benchmark.main(["xplane", str(tmp_path / "nothing")])


def test_matmuls_counts_the_steps_products_and_weighs_the_summary(capsys):
    """`benchmark.py matmuls`: the products of one step (3 per projection and the head, counted per layer) and a
    summary that is the count-weighted time ratio; a tiny run prints it."""
    pytest.importorskip("torch")
    from latent_pretraining import matmul_benchmark as mb

    products = mb.step_products(hidden=8, ffn=16, vocab=32, tokens=4, layers=3)
    assert len(products) == 15 and {p.mode for p in products} == {"nn", "nt", "tn"}
    flops = sum(p.count * p.flops for p in products)
    # per token: 2 FLOP per weight, forward + two backward products, every weight of 3 layers and the head once
    weights = 3 * (4 * 8 * 8 + 3 * 8 * 16) + 8 * 32
    assert flops == 3 * 2 * 4 * weights
    # torch twice as fast as XLA on every product except the head's, where it is as fast: the summary weighs by time
    results = {p.name: {"xla": (1.0, 1.0), "torch": (1.0 if "head" in p.name else 2.0, 1.0)} for p in products}
    head = sum(p.count * p.flops for p in products if "head" in p.name)
    want = (head + (flops - head) / 2) / flops
    assert mb.summarize(products, results) == pytest.approx((want, 1.0))
    assert benchmark.main(["matmuls", "--hidden", "16", "--ffn", "32", "--vocab", "64", "--layers", "1",
                           "--tokens", "8", "--rounds", "1", "--seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "RESULT kernels: torch matmuls take" in out and "lm head bwd x^T@dy" in out
    with pytest.raises(SystemExit):
        benchmark.main(["matmuls", "--tokens", "0"])
