"""Ahead-of-time compile check of a VideoLLaMA preset's train step on fake devices (`scripts/benchmark.py compile`,
or `python scripts/compile_check.py` with the same arguments).

    python scripts/benchmark.py compile --config configs/vipra.py:7b --mesh fsdp=8
    python scripts/benchmark.py compile --config configs/lapa.py:7b --mesh tp=2,fsdp=4 --budget-gib 80
    python scripts/benchmark.py compile --config configs/vipra.py:7b --mesh fsdp=8 \
        --set train.optimizer.grad_accum_steps=2 --set model.llama.remat=dots_saveable

Builds everything abstractly (no weights in memory): the LWM VQGAN (`VQGANConfig()` defaults) or a tiny one for the
debug/demo presets, the LAM preset of the recipe (configs/lam.py `lapa` / `vipra`; `_tiny` for debug, `_demo` for
demo; lam.api.abstract_latent_labeler), and a 32000-id text vocabulary without a tokenizer file
(`latent_pretraining.compile_check.MarkerTokenizer`). Then lowers and compiles the real train step
(latent_pretraining/compile_check.py) and prints per-device memory, FLOPs, the frozen LAM's per-device bytes
(encoder-only as the step carries it, beside the whole LAM; `--full-lam` also compiles the step with the whole LAM
to measure the difference), optionally the FLOPs it executes (`--executed-flops`: XLA's count with the layers
unrolled, remat recomputation included) and the parameter shardings, with PASS/FAIL against `--budget-gib` (exit
status 1 on FAIL); `--json PATH` writes the same report as JSON.

Fake devices: `main` sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` (N = the mesh's device count) and
`JAX_PLATFORMS=cpu` before JAX is first imported; in a process where JAX already runs (e.g. pytest's 8 fake devices)
the mesh must fit in the devices it has. This entry point lives in scripts/ because it resolves preset names of
configs/ (the packages never import configs).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
from typing import Any

from core.jsonable import write_json

if __name__ == "__main__":  # `python scripts/compile_check.py`: the repository root, not scripts/, holds the packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LAM_SUFFIX = {"7b": "", "demo": "_demo", "debug": "_tiny"}


def parse_mesh(text: str) -> dict[str, int]:
    """'tp=2,fsdp=4' -> {'dp': 1, 'fsdp': 4, 'tp': 2, 'sp': 1} (missing axes are 1)."""
    out = {"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key.strip() not in out or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: expected comma-separated axis=size with axes {tuple(out)}")
        out[key.strip()] = int(value)
    if any(v < 1 for v in out.values()):
        raise ValueError(f"--mesh {text!r}: sizes must be positive (give every size explicitly)")
    return out


def _force_devices(n: int) -> None:
    flag = f"--xla_force_host_platform_device_count={n}"
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
        os.environ["JAX_PLATFORMS"] = "cpu"


def load_config(spec: str) -> Any:
    """'configs/vipra.py:7b' -> the preset's ConfigDict (the module is loaded from its path)."""
    import importlib.util

    path, _, preset = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_compile_check_config", path)
    if module_spec is None or not os.path.exists(path):
        raise FileNotFoundError(f"--config {spec!r}: no config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def apply_overrides(config: Any, items: list[str]) -> None:
    """--set a.b.c=value (Python literal, else string) on the locked-shape ConfigDict; an unknown field raises
    core.lookup.UnknownName (a KeyError) suggesting the closest one."""
    from core.lookup import set_field

    for item in items:
        key, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        set_field(config, key, value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="e.g. configs/vipra.py:7b")
    p.add_argument("--mesh", default="fsdp=8", help="axis sizes, e.g. fsdp=8 or tp=2,fsdp=4 (dp, fsdp, tp, sp)")
    p.add_argument("--budget-gib", type=float, default=80.0, help="device memory budget per device (GiB)")
    p.add_argument("--lam", default="", help="configs/lam.py preset (default: the recipe's, sized by the preset)")
    p.add_argument("--vqgan", choices=("auto", "lwm", "tiny"), default="auto",
                   help="auto: LWM's VQGAN for 7b, a tiny one otherwise")
    p.add_argument("--text-vocab", type=int, default=32000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--full-lam", action="store_true",
                   help="also compile the step with the whole LAM (decoder included) in its state, to measure the "
                        "per-device memory encoder-only saves (twice the time)")
    p.add_argument("--executed-flops", action="store_true",
                   help="also count the FLOPs the step executes (XLA's count with the layers unrolled: two more, "
                        "smaller compiles)")
    p.add_argument("--json", default="", metavar="PATH", help="also write the report as JSON to PATH")
    a = p.parse_args(argv)
    shape = parse_mesh(a.mesh)
    _force_devices(math.prod(shape.values()))

    import jax

    from configs import lam as lam_configs
    from latent_pretraining import compile_check

    n = math.prod(shape.values())
    if jax.device_count() < n:  # JAX was imported before main() could ask for more fake devices
        raise RuntimeError(f"mesh {a.mesh} needs {n} devices but JAX sees {jax.device_count()}: run in a fresh "
                           f"process or set XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX loads")
    config = load_config(a.config)
    apply_overrides(config, a.set)
    preset = str(config.preset)
    lam_preset = a.lam or f"{config.recipe}{LAM_SUFFIX.get(preset, '')}"
    lam_config = lam_configs.get_config(lam_preset) if config.layout.latent_steps else None
    tiny = a.vqgan == "tiny" or (a.vqgan == "auto" and preset != "7b")
    report = compile_check.check_config(config, lam_config, shape, tiny_vqgan=tiny, text_vocab=a.text_vocab,
                                        name=f"{a.config} (LAM {lam_preset}, VQGAN {'tiny' if tiny else 'LWM'})",
                                        measure_full_lam=a.full_lam, count_executed_flops=a.executed_flops)
    budget = a.budget_gib * 2**30
    print(report.format(budget), flush=True)
    if a.json:
        write_json(a.json, report.to_json(budget))
    if not report.fits(budget):
        print("error: " + report.failure_message(budget), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
