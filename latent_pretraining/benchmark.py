"""``train-step`` benchmark: one LLaMA forward + backward + SGD update, ours (JAX) vs Hugging Face (torch).

Reports, from one run on one machine:
- model FLOP/s of our jitted step divided by the machine's matmul peak measured in the same run (a square f32 matmul,
  best of several): a CPU "MFU";
- HF ``LlamaForCausalLM`` (torch, same config, same weights layout) step time divided by ours.

    python scripts/benchmark.py train-step                 # d=512, 8 layers, seq 512, batch 4, f32
    python scripts/benchmark.py train-step --preset 1b --dtype bfloat16 --batch 8 --seq 2048 --no-hf   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from latent_pretraining.model.llama import LlamaForCausalLM, lm_loss, random_params
from latent_pretraining.model.llama_config import LlamaConfig, preset


def _timeit(fn: Callable[[], Any], steps: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of ``steps`` calls (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(steps):
        c, t = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 10) -> tuple[float, float]:
    """Best FLOP/s (wall) and FLOP per CPU-second of a jitted ``n x n`` matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    wall, cpu = _timeit(lambda: f(a, b).block_until_ready(), repeats, warmup=2)
    return 2 * n**3 / min(wall), 2 * n**3 / min(cpu)


def make_step(cfg: LlamaConfig, lr: float = 1e-3) -> Callable:
    """Jitted ``(params, tokens) -> (params, loss)``: next-token CE, backward, SGD update; params donated."""
    model = LlamaForCausalLM(cfg)

    def loss_fn(params: Any, tokens: jax.Array) -> jax.Array:
        return lm_loss(model, params, tokens)

    def step(params: Any, tokens: jax.Array) -> tuple[Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        return jax.tree.map(lambda p, g: p - lr * g.astype(p.dtype), params, grads), loss

    return jax.jit(step, donate_argnums=0)


def prepare_ours(cfg: LlamaConfig, batch: int, seq: int) -> tuple[Callable[[], None], Any, float]:
    """``(run one step, compiled step, compile seconds)`` of our step on random tokens (params donated each call)."""
    params = random_params(cfg)
    tokens = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, cfg.vocab_size)
    step = make_step(cfg)
    t = time.perf_counter()
    compiled = step.lower(params, tokens).compile()
    compile_s = time.perf_counter() - t
    state = {"params": params}

    def run() -> None:
        state["params"], loss = compiled(state["params"], tokens)
        loss.block_until_ready()

    return run, compiled, compile_s


def time_ours(cfg: LlamaConfig, batch: int, seq: int, steps: int) -> tuple[tuple[list[float], list[float]], float]:
    run, _, compile_s = prepare_ours(cfg, batch, seq)
    return _timeit(run, steps), compile_s


def temp_bytes(compiled: Any) -> int | None:
    """XLA's temporary buffer bytes of a compiled executable (None where the backend does not say)."""
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def interleaved(runs: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, tuple[list, list]]:
    """Wall and CPU seconds per step of each runner, alternating runners every ``steps`` steps for ``rounds``
    rounds (after one warm-up call each), so that load on a shared machine hits every variant alike."""
    for fn in runs.values():
        fn()
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            wall, cpu = _timeit(fn, steps, warmup=0)
            out[name][0].extend(wall)
            out[name][1].extend(cpu)
    return out


def print_comparison(results: dict[str, tuple[list, list]], temps: dict[str, int | None], base: str) -> None:
    """One line per variant: min / median wall, min CPU, temporaries, and the ratios to ``base``."""
    bw, bc = min(results[base][0]), min(results[base][1])
    for name, (wall, cpu) in results.items():
        t = temps.get(name)
        mb = f"{t / 2**20:.0f} MiB" if t is not None else "n/a"
        print(f"{name:>8}: wall min {min(wall) * 1e3:.0f} ms (median {statistics.median(wall) * 1e3:.0f}), "
              f"CPU min {min(cpu):.2f} s/step, temporaries {mb} | wall / {base} = {min(wall) / bw:.3f}, "
              f"CPU / {base} = {min(cpu) / bc:.3f}")


def time_hf(cfg: LlamaConfig, batch: int, seq: int, steps: int, threads: int | None) -> tuple[list[float], list[float]]:
    """The same step in HF transformers (torch, eager, SDPA attention)."""
    import torch
    import transformers

    from latent_pretraining.convert.hf_llama import config_to_hf

    if threads:
        torch.set_num_threads(threads)
    hf_cfg = transformers.LlamaConfig(**{**config_to_hf(cfg), "torch_dtype": None, "dtype": cfg.param_dtype})
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf_cfg).to(getattr(torch, cfg.param_dtype)).train()
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    lr = 1e-3

    def run() -> None:
        out = model(tokens[:, :-1], labels=None)
        loss = torch.nn.functional.cross_entropy(
            out.logits.float().reshape(-1, cfg.vocab_size), tokens[:, 1:].reshape(-1)
        )
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
                p.grad = None

    return _timeit(run, steps)


def train_step_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py train-step", description=__doc__)
    p.add_argument("--preset", default="", help="size preset (default: d=512, 8 layers, 8 heads, ffn 1536)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", default="none")
    p.add_argument("--no-scan", action="store_true")
    p.add_argument("--attention-impl", default="auto", choices=["auto", "xla", "cudnn"])
    p.add_argument("--attention-chunk", type=int, default=128, help="attention_q_chunk (0: one attention call)")
    p.add_argument("--loss-chunk", type=int, default=0, help="loss_chunk: chunked head + CE (0: all logits at once)")
    p.add_argument("--attention-kv-block", type=int, default=0,
                   help="attention_kv_block: online-softmax attention over key blocks (0: off)")
    p.add_argument("--compare-lean", nargs="*", default=[], metavar="LOSS_CHUNK,KV_BLOCK",
                   help="time the configured step ('base') against the same with these two fields (one variant per "
                        "pair), interleaved for --rounds rounds of --steps; print temporaries and ratios")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --compare-lean")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul measuring the peak")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)
    common = dict(
        dtype=args.dtype,
        remat=args.remat,
        scan_layers=not args.no_scan,
        attention_impl=args.attention_impl,
        attention_q_chunk=args.attention_chunk,
        loss_chunk=args.loss_chunk,
        attention_kv_block=args.attention_kv_block,
    )
    if args.preset:
        cfg = preset(args.preset, **common)
    else:
        cfg = LlamaConfig(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn, num_layers=args.layers,
            num_heads=args.heads, max_seq_len=max(args.seq, 2048), **common,
        )  # fmt: skip
    tokens = args.batch * args.seq
    flops = cfg.flops_per_token(args.seq) * tokens
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}")
    print(
        f"config: d={cfg.hidden_size} layers={cfg.num_layers} heads={cfg.num_heads} ffn={cfg.intermediate_size} "
        f"vocab={cfg.vocab_size} params={cfg.num_params() / 1e6:.1f}M  batch={args.batch} seq={args.seq} "
        f"dtype={cfg.dtype} remat={cfg.remat} scan={cfg.scan_layers} q_chunk={cfg.attention_q_chunk}  "
        f"model TFLOP/step={flops / 1e12:.3f}"
    )
    if args.compare_lean:
        return compare_lean(cfg, args)
    peak_dtype = "bfloat16" if args.dtype == "bfloat16" else "float32"
    peak, peak_cpu = matmul_peak(args.peak_size, dtype=peak_dtype)
    (ours, ours_cpu), compile_s = time_ours(cfg, args.batch, args.seq, args.steps)
    peak2, peak_cpu2 = matmul_peak(args.peak_size, dtype=peak_dtype)  # shared machines are noisy: best of before/after
    peak, peak_cpu = max(peak, peak2), max(peak_cpu, peak_cpu2)
    t_ours = min(ours)
    print(
        f"matmul peak ({peak_dtype}, {args.peak_size}^3): {peak / 1e9:.1f} GFLOP/s wall, "
        f"{peak_cpu / 1e9:.1f} GFLOP per CPU-s"
    )
    print(
        f"ours: compile {compile_s:.1f}s, step min {t_ours * 1e3:.0f} ms (median {statistics.median(ours) * 1e3:.0f}),"
        f" {tokens / t_ours:.0f} tokens/s, {flops / t_ours / 1e9:.1f} GFLOP/s, CPU {min(ours_cpu):.2f} s/step"
    )
    print(f"RESULT model_flops_per_s / matmul_peak = {flops / t_ours / peak:.3f}  (wall clock, best/best)")
    print(f"RESULT same, per CPU-second = {flops / min(ours_cpu) / peak_cpu:.3f}  (robust to other processes)")
    if not args.no_hf:
        hf, hf_cpu = time_hf(cfg, args.batch, args.seq, args.steps, args.torch_threads or None)
        t_hf = min(hf)
        print(f"hf transformers (torch): step min {t_hf * 1e3:.0f} ms (median {statistics.median(hf) * 1e3:.0f}), "
              f"CPU {min(hf_cpu):.2f} s/step")  # fmt: skip
        print(f"RESULT hf_step_time / our_step_time = {t_hf / t_ours:.2f}  (wall clock, best of {args.steps})")
        print(f"RESULT same, CPU time = {min(hf_cpu) / min(ours_cpu):.2f}")
    return 0


def parse_lean(text: str) -> tuple[int, int]:
    """``"LOSS_CHUNK,KV_BLOCK"`` -> two ints >= 0 (one clear line otherwise)."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SystemExit(f"--compare-lean expects LOSS_CHUNK,KV_BLOCK (two integers >= 0, e.g. 128,128), got {text!r}")
    return int(parts[0]), int(parts[1])


def compare_lean(cfg: LlamaConfig, args: argparse.Namespace) -> int:
    """Base vs lean steps, interleaved in one process (see ``--compare-lean``)."""
    import dataclasses

    variants = {"base": cfg}
    for text in args.compare_lean:
        loss_chunk, kv_block = parse_lean(text)
        variants[f"{loss_chunk},{kv_block}"] = dataclasses.replace(cfg, loss_chunk=loss_chunk,
                                                                   attention_kv_block=kv_block)
    runs, temps = {}, {}
    for name, c in variants.items():
        run, compiled, compile_s = prepare_ours(c, args.batch, args.seq)
        runs[name], temps[name] = run, temp_bytes(compiled)
        print(f"{name}: loss_chunk={c.loss_chunk} attention_kv_block={c.attention_kv_block} "
              f"q_chunk={c.attention_q_chunk}, compile {compile_s:.1f}s")
    print_comparison(interleaved(runs, args.rounds, args.steps), temps, "base")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(train_step_main)
