"""``train-step`` benchmark: the trainer's real step timed beside a reference, interleaved, in one process.

``--model llama`` (default): the LLaMA step exactly as training runs it (``lm_loss`` next-token CE,
``training/step.py`` with clipping + the project's AdamW from ``training/optim.py``, the state donated) beside HF
``transformers`` LlamaForCausalLM (torch CPU, same shapes, same loss, clipping + torch AdamW with the same
hyper-parameters), plus optional lean variants of ours (``--lean LOSS_CHUNK,KV_BLOCK``). ``--model vla``: the
VideoLLaMA step with the real objective and the frozen VQGAN + LAM inside (raw frames in the batch).
``--model lam``: the LAM step. Every run also times a square matmul in the same rounds: its FLOP per CPU-second is
the peak that "fraction of peak" divides by. See ``step_table`` for what each column means.

    python scripts/benchmark.py train-step                          # d=512, 8 layers, FFN 1408, seq 512, batch 4
    python scripts/benchmark.py train-step --lean 128,0 0,128 128,128 --rounds 4
    python scripts/benchmark.py train-step --model vla --size demo --batch 8
    python scripts/benchmark.py train-step --model lam --size lapa_demo --batch 16
    python scripts/benchmark.py train-step --small                  # seconds: tiny shapes (tests)
    python scripts/benchmark.py train-step --preset 1b --dtype bfloat16 --batch 8 --seq 2048 --peak-size 8192  # GPU

On a GPU, HF runs on CUDA beside ours (torch autocast for bf16) and the summary adds the MFU against the chip's
datasheet peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from core.errors import UserError
from latent_pretraining.model.llama import LlamaForCausalLM, init_params, lm_loss
from latent_pretraining.model.llama_config import ATTENTION_IMPLS, LlamaConfig, preset
from latent_pretraining.training import mesh as mesh_lib
from latent_pretraining.training import optim, step_table
from latent_pretraining.training import sharding as sharding_lib
from latent_pretraining.training import state as state_lib
from latent_pretraining.training import step as step_lib


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


def llama_optimizer_config(lr: float = 1e-4, weight_decay: float = 0.1) -> ml_collections.ConfigDict:
    """The trainer's optimizer section (`training/optim.py`: clip 1.0 -> AdamW b2 0.95, decay on matrices only)."""
    c = optim.default_config()
    c.lr, c.weight_decay, c.schedule = lr, weight_decay, "constant"
    return c


def prepare_ours(cfg: LlamaConfig, batch: int, seq: int) -> tuple[Callable[[], None], Any, float]:
    """``(run one step, compiled step, compile seconds)`` of the trainer's real step on random tokens: next-token CE
    (``lm_loss``), ``training/step.py`` (grad norm, clipping, AdamW from ``training/optim.py``, metrics) jitted by
    ``step.jit_train_step`` with the state donated, on a one-device mesh."""
    model = LlamaForCausalLM(cfg)
    mesh = mesh_lib.make_mesh({"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}, devices=jax.devices()[:1])

    def init_fn(rng: jax.Array) -> Any:
        return init_params(cfg, rng, boxed=True)

    def loss_fn(params: Any, data: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        del rng
        return lm_loss(model, {"params": params}, data["tokens"]), {}

    rng = jax.random.PRNGKey(0)
    with jax.set_mesh(mesh):
        abstract = sharding_lib.unbox(jax.eval_shape(init_fn, rng)["params"])
        tx, schedule = optim.make_optimizer(llama_optimizer_config(), 1000, abstract)
        state, shardings, _ = state_lib.create_train_state(init_fn, tx, mesh, rng)
        data_sharding = mesh_lib.batch_sharding(mesh, 2)
        tokens = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, cfg.vocab_size)
        data = {"tokens": jax.device_put(tokens, data_sharding)}
        fn = step_lib.jit_train_step(step_lib.make_train_step(loss_fn, tx, schedule=schedule), shardings,
                                     {"tokens": data_sharding})
        t = time.perf_counter()
        compiled = fn.lower(state, data).compile()
        compile_s = time.perf_counter() - t
    box = [state]

    def run() -> None:
        box[0], metrics = compiled(box[0], data)
        jax.block_until_ready((box[0].params, metrics))

    return run, compiled, compile_s


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


def prepare_hf(cfg: LlamaConfig, batch: int, seq: int, threads: int | None) -> Callable[[], None]:
    """One HF ``transformers`` LlamaForCausalLM step (eager, SDPA attention) with the same loss (mean next-token CE on
    f32 logits) and the same optimizer: global-norm clipping at 1.0, then torch AdamW (b1 0.9, b2 0.95, eps 1e-8,
    decay 0.1 on matrices only, as ``llama_optimizer_config``). On the CPU when JAX runs there; on CUDA when JAX runs
    on a GPU and torch sees one, with the same precision as ours: parameters in ``param_dtype`` and, for a half
    precision ``dtype``, matmuls under ``torch.autocast`` in that dtype (torch's standard mixed precision)."""
    import contextlib

    import torch
    import transformers

    from latent_pretraining.convert.hf_llama import config_to_hf

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    half = cfg.dtype in ("bfloat16", "float16") and device == "cuda"
    hf_cfg = transformers.LlamaConfig(**{**config_to_hf(cfg), "torch_dtype": None, "dtype": cfg.param_dtype})
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf_cfg).to(device=device, dtype=getattr(torch, cfg.param_dtype)).train()
    oc = llama_optimizer_config()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": oc.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=oc.lr, betas=(oc.b1, oc.b2), eps=oc.eps)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)

    def run() -> None:
        ctx = torch.autocast("cuda", getattr(torch, cfg.dtype)) if half else contextlib.nullcontext()
        with ctx:
            logits = model(tokens[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg.vocab_size),
                                                 tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, oc.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def hf_available() -> str:
    """'' when torch and transformers import, else the one-line reason."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"not installed ({e.name})"
    return ""


def llama_config(args: argparse.Namespace, **over: Any) -> LlamaConfig:
    """The benchmark's LLaMA config from the command line (``--preset`` or the shape flags)."""
    common = dict(dtype=args.dtype, remat=args.remat, scan_layers=not args.no_scan,
                  attention_impl=args.attention_impl, attention_q_chunk=args.attention_chunk,
                  loss_chunk=args.loss_chunk, attention_kv_block=args.attention_kv_block)
    common.update(over)
    if args.preset:
        return preset(args.preset, **common)
    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                       num_layers=args.layers, num_heads=args.heads, max_seq_len=max(args.seq, 2048), **common)


def llama_variants(args: argparse.Namespace) -> tuple[list[step_table.Variant], str]:
    """Ours (the configured step, then each ``--lean`` variant) and HF; the header line."""
    cfg = llama_config(args)
    flops = cfg.flops_per_token(args.seq) * args.batch * args.seq
    head = (f"LLaMA step: d={cfg.hidden_size} layers={cfg.num_layers} heads={cfg.num_heads} "
            f"ffn={cfg.intermediate_size} vocab={cfg.vocab_size} params={cfg.num_params() / 1e6:.1f}M "
            f"batch={args.batch} seq={args.seq} {cfg.dtype} remat={cfg.remat} q_chunk={cfg.attention_q_chunk} "
            f"loss_chunk={cfg.loss_chunk} kv_block={cfg.attention_kv_block}, model TFLOP/step={flops / 1e12:.3f}")
    out = []
    configs = {"ours": cfg}
    for text in args.lean:
        lc, kv = parse_lean(text)
        configs[f"ours lc={lc} kv={kv}"] = dataclasses.replace(cfg, loss_chunk=lc, attention_kv_block=kv)
    for name, c in ({} if args.hf_only else configs).items():
        run, compiled, compile_s = prepare_ours(c, args.batch, args.seq)
        out.append(step_table.Variant(name, run, flops, temp_bytes=temp_bytes(compiled),
                                      note=f"compile {compile_s:.1f} s"))
    if not args.no_hf:
        why = hf_available()
        if why:
            print(f"HF transformers: {why}")
        else:
            try:
                run = prepare_hf(cfg, args.batch, args.seq, args.torch_threads or None)
            except Exception as e:  # e.g. out of memory beside ours on one accelerator
                print(f"HF transformers: not timed, {step_table.error_line(e)}")
            else:
                out.append(step_table.Variant("hf", run, flops))
    return out, head


def train_step_main(argv: list[str], get_config: Callable[[str, str], ml_collections.ConfigDict] | None = None
                    ) -> int:
    """Runs the benchmark. ``get_config(kind, preset)`` resolves configs/ presets (kind "lapa" / "vipra" / "lam"),
    passed in by the script layer (scripts/benchmark_presets.py); ``--model llama`` needs none."""
    p = argparse.ArgumentParser(prog="benchmark.py train-step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama", choices=("llama", "vla", "lam"),
                   help="llama: the LM step vs HF transformers; vla: the VideoLLaMA step (frozen VQGAN + LAM "
                        "inside); lam: the LAM step")
    p.add_argument("--small", action="store_true", help="tiny shapes (a test runs the whole command in seconds)")
    p.add_argument("--preset", default="", help="LLaMA size preset (default: the shape flags)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", default="none")
    p.add_argument("--no-scan", action="store_true")
    p.add_argument("--attention-impl", default="auto", choices=list(ATTENTION_IMPLS))
    p.add_argument("--attention-chunk", type=int, default=128, help="attention_q_chunk (0: one attention call)")
    p.add_argument("--loss-chunk", type=int, default=0, help="loss_chunk: chunked head + CE (0: all logits at once)")
    p.add_argument("--attention-kv-block", type=int, default=0,
                   help="attention_kv_block: online-softmax attention over key blocks (0: off)")
    p.add_argument("--lean", nargs="*", default=[], metavar="LOSS_CHUNK,KV_BLOCK",
                   help="extra 'ours' variants in the table, one per pair (llama and vla)")
    p.add_argument("--compare-lean", nargs="*", default=[], metavar="LOSS_CHUNK,KV_BLOCK",
                   help="older output: the configured step ('base') against these variants only, with temporaries")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each variant --steps steps per round)")
    p.add_argument("--steps", type=int, default=2,
                   help="timed steps per variant per round; keep >= 2: the first step of ours after HF's ran ~30 %% "
                        "slower on a 2-core Xeon (docs/training.md), and the table takes the minimum")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--hf-only", action="store_true",
                   help="time only HF (beside the matmul): for one accelerator whose memory does not hold both steps")
    p.add_argument("--peak-size", type=int, default=2048,
                   help="side of the square matmul measuring the same-run peak (8192 on a GPU/TPU)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="the chip's dense peak for MFU on an accelerator (0: step_table.DATASHEET_TFLOPS by device)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="after timing, trace 2 steps of the first variant with jax.profiler into DIR (xplane.pb; "
                        "summarize it with `scripts/benchmark.py xplane DIR`)")
    p.add_argument("--size", default="demo", help="vla: 'demo' or a LLaMA preset; lam: a configs/lam.py preset")
    p.add_argument("--recipe", default="vipra", choices=("lapa", "vipra"), help="vla: the layout")
    args = p.parse_args(argv)
    if args.hf_only and (args.no_hf or args.model != "llama"):
        p.error("--hf-only times the HF LLaMA step alone: it needs --model llama and no --no-hf")
    if args.small:
        args.hidden, args.layers, args.heads, args.ffn, args.vocab, args.seq, args.batch = 32, 1, 2, 64, 64, 16, 2
        args.attention_chunk, args.peak_size = 8, 128
        args.size = {"llama": args.size, "vla": "debug", "lam": "lapa_tiny"}[args.model]
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  "
          f"load average {step_table.loadavg()}")
    if args.compare_lean:
        return compare_lean(llama_config(args), args)
    if args.model != "llama" and get_config is None:
        raise UserError(f"--model {args.model} needs configs/ presets: run it as scripts/benchmark.py train-step")
    if args.model == "llama":
        variants, head = llama_variants(args)
    elif args.model == "vla":
        from latent_pretraining import vla_benchmark

        variants, head = vla_benchmark.step_variants(args, get_config)
    else:
        from lam import benchmark as lam_benchmark

        variants, head = lam_benchmark.step_variants(args, lambda name: get_config("lam", name))
    print(head)
    peak_dtype = "bfloat16" if args.dtype == "bfloat16" else "float32"
    variants.append(step_table.matmul_variant(args.peak_size, peak_dtype))
    results = step_table.measure(variants, args.rounds, args.steps)
    if args.profile:
        profile_steps(next((r.variant for r in results if not r.variant.is_peak), results[0].variant), args.profile)
    print(step_table.format_table(results, base="ours", ref="hf"))
    kind = jax.devices()[0].device_kind
    chip_peak = args.peak_tflops * 1e12 or step_table.datasheet_flops(kind, args.dtype)
    for line in step_table.summary(results, base="ours", ref="hf", chip_peak=chip_peak, chip=kind):
        print(line)
    print(f"load average after: {step_table.loadavg()}")
    return 0


def profile_steps(variant: step_table.Variant, out_dir: str, steps: int = 2) -> None:
    """Traces ``steps`` calls of an already warmed-up variant with ``jax.profiler`` (one xplane.pb under
    ``out_dir/plugins/profile/<run>/``)."""
    with jax.profiler.trace(out_dir):
        for _ in range(steps):
            variant.run()
    print(f"profile: {steps} steps of {variant.name!r} traced into {out_dir}")


def parse_lean(text: str) -> tuple[int, int]:
    """``"LOSS_CHUNK,KV_BLOCK"`` -> two ints >= 0 (one clear line otherwise)."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--compare-lean expects LOSS_CHUNK,KV_BLOCK (two integers >= 0, e.g. 128,128), got {text!r}")
    return int(parts[0]), int(parts[1])


def compare_lean(cfg: LlamaConfig, args: argparse.Namespace) -> int:
    """Base vs lean steps, interleaved in one process (see ``--compare-lean``)."""
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
