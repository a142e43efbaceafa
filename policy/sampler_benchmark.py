"""``sampler`` benchmark: flow-matching chunk generation with the prefix KV cache versus naive full recomputation.

For each backbone size, one ViPRA-style layout (prompt + W frames of g² VQGAN ids + terminators + "</vision>
<action>" + H slots + "</action>" + EOS, padded to the layout length, which also fits the video suffix), random
params, batch B; both samplers jitted, compiled once, then timed (median of --repeats calls). Prints the speed-up
and the max |cached - naive| over the chunk.

    python scripts/benchmark.py sampler                                 # demo + 200m, ViPRA demo geometry
    python scripts/benchmark.py sampler --sizes demo --slots 14 --steps 10 --repeats 5
    python scripts/benchmark.py sampler --sizes 200m --tokens-per-frame 256 --prompt-len 128   # 7b-like layout
    python scripts/benchmark.py sampler --action-only      # naive recomputes only prefix + chunk (ViPRA's naive)
    python scripts/benchmark.py sampler --sizes 7b --dtype bfloat16 --tokens-per-frame 256 --prompt-len 128 \
        --slots 14 --repeats 10                            # on a GPU: the 7B chunk latency
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from core.jsonable import write_json
from latent_pretraining import flow
from latent_pretraining.model.llama_config import preset
from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig, init_params
from latent_pretraining.sequence import LayoutSpec, assemble
from policy.sampler import jit_flow_sample

# (hidden, ffn, layers, heads) of the demo preset (configs/vla_common.demo_model); text vocab of the demo tokenizer
DEMO = {"hidden_size": 192, "intermediate_size": 512, "num_layers": 3, "num_heads": 4, "vocab_size": 512}


def layout(prompt_len: int, tokens_per_frame: int, slots: int, bidirectional: bool, action_only: bool = False
           ) -> LayoutSpec:
    """ViPRA geometry: 2 history frames, future frame, `slots` latent steps of 16 codes + separator, H slots
    (`action_only`: the fine-tuning layout without the video suffix, so L = prefix + H + "</action>" + EOS, the
    length ViPRA's own naive sampler recomputes)."""
    return LayoutSpec(prompt_len=prompt_len, num_frames=2, tokens_per_frame=tokens_per_frame, vision_codebook=1024,
                      future_frame=not action_only, latent_steps=0 if action_only else slots, codes_per_step=16,
                      latent_codebook=8,
                      latent_separator=True, action_slots=slots, bos_id=1, eos_id=2, pad_id=0,
                      video_open=(10, 11, 12, 13), video_close=(14, 15), action_open=(10, 11, 16, 17),
                      action_close=(18, 19), bidirectional_actions=bidirectional)


def model_config(size: str, dtype: str, param_dtype: str = "") -> VideoLlamaConfig:
    """The backbone at ``size`` computing in ``dtype``, parameters stored in ``param_dtype`` (default: ``dtype``;
    serving a half-precision policy keeps half-precision weights)."""
    over = dict(DEMO) if size == "demo" else {"vocab_size": 32000}
    llama = preset("debug" if size == "demo" else size, dtype=dtype, param_dtype=param_dtype or dtype,
                   max_seq_len=4096, **over)
    return VideoLlamaConfig(llama=llama, vision_vocab_size=1026, latent_vocab_size=9, action_vocab_size=0,
                            action_dim=7)


def _median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_one(size: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = model_config(size, args.dtype, args.param_dtype)
    model = VideoLlama(cfg)
    params = jax.jit(lambda r: init_params(cfg, r)["params"])(jax.random.PRNGKey(0))
    spec = layout(args.prompt_len, args.tokens_per_frame, args.slots, args.bidirectional, args.action_only)
    rng = np.random.default_rng(0)
    b = args.batch
    prompt = rng.integers(3, 500, (b, spec.prompt_len)).astype(np.int32)
    pmask = np.ones((b, spec.prompt_len), bool)
    pmask[:, : spec.prompt_len // 4] = False  # some left padding, as in real prompts
    frames = rng.integers(0, 1024, (b, 2, spec.tokens_per_frame)).astype(np.int32)
    video = {} if args.action_only else {"future_ids": jnp.zeros((b, spec.tokens_per_frame), jnp.int32),
                                         "latent_ids": jnp.zeros((b, spec.latent_steps, 16), jnp.int32)}
    seq = assemble(spec, jnp.asarray(prompt), jnp.asarray(pmask), jnp.asarray(frames),
                   action_row=jnp.ones((b,), bool), **video)
    noise = jax.random.normal(jax.random.PRNGKey(1), (b, spec.action_slots, 7), jnp.float32)
    fcfg = flow.FlowConfig(steps=args.steps)
    naive = jit_flow_sample(model, spec, fcfg, args.steps, "euler", False)
    cached = jit_flow_sample(model, spec, fcfg, args.steps, "euler", True)
    t0 = time.perf_counter()
    a = np.asarray(naive(params, seq, noise))
    c = np.asarray(cached(params, seq, noise))
    compile_s = time.perf_counter() - t0
    t_naive = _median_time(lambda: naive(params, seq, noise), args.repeats)
    t_cached = _median_time(lambda: cached(params, seq, noise), args.repeats)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"size": size, "params_M": round(n_params / 1e6, 1), "dtype": args.dtype,
            "param_dtype": cfg.llama.param_dtype, "batch": b,
            "layout_len": spec.length, "prefix_len": int(spec.action_positions[0]), "slots": spec.action_slots,
            "steps": args.steps, "bidirectional": args.bidirectional, "action_only": args.action_only,
            "naive_s": round(t_naive, 4),
            "cached_s": round(t_cached, 4), "speedup": round(t_naive / t_cached, 2),
            "max_abs_diff": float(np.abs(a - c).max()), "first_call_s": round(compile_s, 1),
            "device": jax.devices()[0].device_kind}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py sampler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="demo,200m", help="comma-separated: demo or a llama_config preset")
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--tokens-per-frame", type=int, default=64, help="VQGAN ids per frame (64 px demo: 8x8)")
    p.add_argument("--slots", type=int, default=6, help="H action slots (ViPRA demo 6, published 14)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", help="compute dtype")
    p.add_argument("--param-dtype", default="", help="parameter storage dtype (default: --dtype)")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--action-only", action="store_true",
                   help="fine-tuning layout (no video suffix): the naive pass covers only prefix + H + 2 tokens")
    p.add_argument("--json", default="", help="also write the rows to this file")
    args = p.parse_args(argv)
    rows = []
    for size in [s for s in args.sizes.split(",") if s]:
        row = run_one(size, args)
        rows.append(row)
        print(f"{row['size']:>5} ({row['params_M']}M, {row['dtype']}, {row['device']}): layout {row['layout_len']} "
              f"tokens, prefix {row['prefix_len']}, H={row['slots']}, {row['steps']} Euler steps, batch "
              f"{row['batch']}: naive {row['naive_s'] * 1e3:.1f} ms, cached {row['cached_s'] * 1e3:.1f} ms -> "
              f"speed-up {row['speedup']:.2f}x, max |cached - naive| = {row['max_abs_diff']:.2e}", flush=True)
    if args.json:
        write_json(args.json, rows)
    return 0
