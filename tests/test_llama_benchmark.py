"""The ``scripts/benchmark.py`` dispatcher and a tiny ``train-step`` run (the real figures come from the script)."""

import sys
from pathlib import Path

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
