"""Ahead-of-time compile check of the VideoLLaMA train step: lower and compile the REAL step (frozen VQGAN + LAM inside,
objective loss, AdamW, `step.make_train_step` exactly as `loop.run` builds it) for a mesh, from abstract shapes only
(`jax.ShapeDtypeStruct` with shardings; no weights in memory), and report per-device memory, FLOPs and shardings.

    setup = train.build(config, latent, tokenizer=MarkerTokenizer(), vision=(vq_cfg, vqgan.param_shapes(vq_cfg)))
    report = compile_train_step(setup, mesh)            # frozen weights may be ShapeDtypeStructs
    print(report.format(budget_bytes)); report.fits(budget_bytes)

The command-line entry (`python scripts/benchmark.py compile ...`) is scripts/compile_check.py: it resolves the config
file and LAM preset names and builds the abstract LAM (lam.api.abstract_latent_labeler). Figures are XLA's buffer
assignment for the backend that compiles (fake CPU devices on a laptop): the CPU compiler fuses and schedules
differently from the GPU/TPU ones, so treat the result as an estimate with a margin, not a guarantee.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from lam import api as lam_api
from latent_pretraining import objective
from latent_pretraining.model import vqgan
from latent_pretraining.train import Setup, build, make_init_fn
from latent_pretraining.training import mesh as mesh_lib
from latent_pretraining.training import optim
from latent_pretraining.training import sharding as sharding_lib
from latent_pretraining.training import state as state_lib
from latent_pretraining.training import step as step_lib

PyTree = Any
GiB = 2**30


class MarkerTokenizer:
    """Stand-in for the text tokenizer (no model file): vocab `vocab_size`, BOS 1 / EOS 2 / PAD 0, and markers split
    roughly as LLaMA's SentencePiece does (" </vision> <delta>" -> "</", "vision", ">", "<", "delta", ">"), so
    layouts get their real lengths. Ids are stable hashes; only the shapes matter here."""

    bos_id, eos_id, pad_id = 1, 2, 0
    model_bytes = b""

    def __init__(self, vocab_size: int = 32000):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        pieces = re.findall(r"</|<|>|\w+|[^\w\s]", text)
        return [3 + zlib.crc32(p.encode()) % (self.vocab_size - 3) for p in pieces]


def abstract_batch(setup: Setup, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The device batch of `train.host_batch_fn` as ShapeDtypeStructs, batch dim sharded over (dp, fsdp)."""
    c, spec, w = setup.config, setup.spec, setup.window
    b, r, h = c.data.batch_size, c.data.resolution, c.data.horizon
    sh = mesh_lib.batch_sharding(mesh, 1)
    img = (r, r, 3)
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        "history": ((b, spec.num_frames, *img), jnp.uint8), "future": ((b, *img), jnp.uint8),
        "actions": ((b, h, 7), jnp.float32), "action_pad_mask": ((b, h), jnp.bool_), "action_valid": ((b,), jnp.bool_),
        "prompt_ids": ((b, spec.prompt_len), jnp.int32), "prompt_mask": ((b, spec.prompt_len), jnp.bool_)}
    if spec.proprio_slots:  # host_batch_fn sends the normalized 8-D proprio for a layout with a proprio slot
        shapes["proprio"] = ((b, 8), jnp.float32)
    if w.vla_clip:
        shapes.update(clip=((b, w.clip_len, *img), jnp.uint8), clip_valid=((b, w.clip_len), jnp.bool_))
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sh) for k, (s, d) in shapes.items()}


@dataclasses.dataclass
class CompileReport:
    """Per-device memory (bytes) of the compiled step, FLOPs and the chosen shardings."""

    name: str
    mesh: dict[str, int]
    batch: int
    length: int
    grad_accum: int
    remat: str
    dtype: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    xla_flops: float  # per device, from compiled.cost_analysis() (while-loop bodies counted once: see format)
    model_flops: float  # global per step: train.py's 3 x (2 x matmul params + attention) x tokens
    num_layers: int
    params: int
    table: list[tuple[str, tuple[int, ...], str, tuple[int, ...]]]  # path, global shape, spec, per-device shape
    compile_seconds: float
    input_bytes: int = 0  # per device, summed over the step's inputs (state + batch) it reads, from their shardings
    unused_inputs: tuple[str, ...] = ()  # inputs jit dropped from the executable (never read, e.g. batch entries)
    lam_bytes: int = 0  # per device: the frozen LAM as the step holds it (encoder only), part of input_bytes
    lam_full_bytes: int | None = None  # per device: the whole LAM (decoder included) under the same sharding rule
    # measured: the same step compiled with the whole LAM in its state (the trainer before lam.api.encoder_only)
    full_lam_argument_bytes: int | None = None
    full_lam_total_bytes: int | None = None
    while_loops: int = 0  # while loops in the compiled step outside jax.random (scanned layers, accumulation):
    # cost_analysis counts each body once
    executed_flops: float | None = None  # global per step, loops unrolled (see executed_flops); None: not counted
    executed_loops_left: int = 0  # model while loops left in executed_flops's compiles (0: the count is whole)

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    @property
    def total_bytes(self) -> int:
        """Arguments + outputs - donated (aliased) + temporaries + generated code: the device footprint of a step."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    def fits(self, budget_bytes: float) -> bool:
        return self.total_bytes <= budget_bytes

    def mesh_str(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.mesh.items())

    def memory_str(self) -> str:
        g = lambda x: f"{x / GiB:.2f}"
        return (f"total {g(self.total_bytes)} GiB = arguments {g(self.argument_bytes)} + outputs "
                f"{g(self.output_bytes)} - aliased {g(self.alias_bytes)} + temps {g(self.temp_bytes)} + code "
                f"{g(self.code_bytes)}")

    def lam_str(self) -> str:
        """The frozen LAM's per-device bytes, encoder-only (the step's input) vs the whole LAM, and the saving."""
        m = lambda x: f"{x / 2**20:.1f} MiB"
        text = f"frozen LAM per device: encoder-only {m(self.lam_bytes)} (in the step's arguments)"
        if self.lam_full_bytes is not None:
            text += (f" | whole LAM {m(self.lam_full_bytes)} | saved {m(self.lam_full_bytes - self.lam_bytes)} "
                     f"({1 - self.lam_bytes / max(self.lam_full_bytes, 1):.0%})")
        if self.full_lam_argument_bytes is not None and self.full_lam_total_bytes is not None:
            text += (f"\n  measured, the step compiled with the whole LAM: arguments "
                     f"+{m(self.full_lam_argument_bytes - self.argument_bytes)}, total "
                     f"+{m(self.full_lam_total_bytes - self.total_bytes)}")
        return text

    def to_json(self, budget_bytes: float) -> dict[str, Any]:
        """The report as a JSON-ready dict, with the derived figures (devices, total bytes, verdict)."""
        return {**dataclasses.asdict(self), "devices": self.devices, "total_bytes": self.total_bytes,
                "budget_bytes": budget_bytes, "fits": self.fits(budget_bytes)}

    def format(self, budget_bytes: float) -> str:
        lines = [f"compile check: {self.name} | mesh {self.mesh_str()} ({self.devices} devices) | global batch "
                 f"{self.batch} x {self.length} tokens | grad_accum {self.grad_accum} | remat {self.remat} | "
                 f"{self.dtype} | {self.params / 1e9:.2f}B trainable params | compiled in {self.compile_seconds:.0f} s",
                 f"per-device memory: {self.memory_str()}",
                 f"arguments {'=' if self.input_bytes == self.argument_bytes else '!='} the inputs the step reads "
                 f"(state + batch) summed from their shardings: {self.input_bytes} bytes (unread, dropped by jit: "
                 f"{', '.join(self.unused_inputs) or 'none'})",
                 self.lam_str(),
                 f"FLOPs per step: model {self.model_flops:.3e} (analytic, all {self.num_layers} layers) | XLA "
                 f"cost_analysis {self.xla_flops:.3e} per device x {self.devices} = {self.xla_flops * self.devices:.3e}"
                 f" ({self.while_loops} model while loops, e.g. scanned layers / accumulation, each counted once)",
                 *([f"executed FLOPs per step (XLA, loops unrolled, remat recomputation and frozen encoders "
                    f"included, summed over devices): {self.executed_flops:.3e} = "
                    f"{self.executed_flops / max(self.model_flops, 1):.2f} x model"
                    + (f" (LOWER BOUND: {self.executed_loops_left} model while loops left)"
                       if self.executed_loops_left else "")]
                   if self.executed_flops is not None else []),
                 "shardings of the largest parameters (optimizer moments follow their parameter):",
                 f"  {'path':58s} {'global shape':>22s}  {'PartitionSpec':34s} per-device"]
        lines += [f"  {p:58s} {s!s:>22s}  {spec:34s} {d}" for p, s, spec, d in self.table]
        verdict = "PASS" if self.fits(budget_bytes) else "FAIL"
        lines.append(f"{verdict}: {self.total_bytes / GiB:.2f} GiB per device "
                     f"{'<=' if self.fits(budget_bytes) else '>'} budget {budget_bytes / GiB:g} GiB")
        return "\n".join(lines)

    def failure_message(self, budget_bytes: float) -> str:
        hints = []
        if self.batch % (2 * self.grad_accum) == 0:
            hints.append(f"--set train.optimizer.grad_accum_steps={2 * self.grad_accum} (activations scale with the "
                         "micro-batch)")
        if self.remat != "nothing_saveable":
            hints.append("--set model.llama.remat=nothing_saveable")
        if self.mesh.get("tp", 1) > 1:
            hints.append("fold tp into fsdp (the batch, the frozen VQGAN/LAM and the residual stream are not split "
                         "over tp)")
        hints.append("more devices on the fsdp axis")
        return (f"{self.name} does NOT fit on mesh {self.mesh_str()} ({self.devices} devices): {self.memory_str()} "
                f"per device > budget {budget_bytes / GiB:g} GiB. Try: " + "; ".join(hints) + ".")


def _shard_shape(shape: tuple[int, ...], sharding: NamedSharding) -> tuple[int, ...]:
    return tuple(sharding.shard_shape(shape))


def per_device_bytes(tree: PyTree, shardings: PyTree | None = None) -> int:
    """Bytes of `tree` (arrays or ShapeDtypeStructs) one device holds: each leaf's shard shape under its sharding
    (`shardings`, a tree of NamedSharding with the structure of `tree`; default each leaf's own `.sharding`) times
    its item size. The meshes here shard evenly (sharding.py only splits divisible dimensions), so every device
    holds the same."""
    leaves = jax.tree.leaves(tree)
    specs = jax.tree.leaves(shardings) if shardings is not None else [x.sharding for x in leaves]
    if len(specs) != len(leaves):
        raise ValueError(f"per_device_bytes: {len(leaves)} arrays but {len(specs)} shardings")
    return sum(math.prod(_shard_shape(tuple(x.shape), s)) * jnp.dtype(x.dtype).itemsize
               for x, s in zip(leaves, specs, strict=True))


def _param_table(abstract: Any, shardings: Any, top: int) -> list[tuple[str, tuple[int, ...], str, tuple[int, ...]]]:
    flat_a, flat_s = state_lib.flatten(abstract), state_lib.flatten(shardings)
    rows = sorted(flat_a, key=lambda k: -math.prod(flat_a[k].shape))[:top]
    return [(k, tuple(flat_a[k].shape), str(flat_s[k].spec), _shard_shape(tuple(flat_a[k].shape), flat_s[k]))
            for k in sorted(rows)]


# jax.random's samplers run small while loops (threefry on CPU, gamma/beta rejection sampling of flow times): a few
# scalar FLOPs per sample, not the model's loops
_RANDOM_OP = re.compile(r"jit\(_(threefry\w*|gamma|beta|uniform|normal\w*)\)")


def _model_loops(hlo_text: str) -> int:
    """While loops in compiled HLO text outside jax.random's samplers: the scanned layers, gradient accumulation,
    anything else XLA's cost analysis counts once instead of per iteration."""
    lines = [x for x in hlo_text.splitlines() if re.search(r"\bwhile\(", x)]
    return sum(not _RANDOM_OP.search(x) for x in lines)


def _kept_inputs(lowered: Any, tree: PyTree) -> tuple[list[Any], list[str]]:
    """(leaves of the step's inputs `tree` that the executable takes, paths of those it does not): jit drops inputs
    the function never reads (keep_unused=False), e.g. batch entries a layout ignores. Read from JAX's lowering
    record (not public API); if that is missing, every input counts as kept."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    kept = getattr(getattr(lowered, "_lowering", None), "compile_args", {}).get("kept_var_idx")
    kept = set(range(len(flat))) if kept is None else set(kept)
    return ([x for i, (_, x) in enumerate(flat) if i in kept],
            [jax.tree_util.keystr(p) for i, (p, _) in enumerate(flat) if i not in kept])


def compile_train_step(setup: Setup, mesh: Mesh, *, name: str = "", top: int = 12,
                       lam_full: PyTree | None = None) -> CompileReport:
    """Lowers and compiles the trainer's jitted step for `mesh` from abstract state and batch; returns the report.

    `lam_full`: the whole frozen LAM's variables (e.g. before `lam.api.encoder_only`), for the per-device bytes it
    would take under the rule the state gives frozen weights (`sharding.param_shardings`, size-based fsdp)."""
    c = setup.config
    tc = c.train
    init_fn = make_init_fn(setup)
    loss_fn = objective.make_loss_fn(setup.model, setup.spec, setup.frozen, dict(c.loss), setup.flow,
                                     c.cotrain_fraction)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        rng = jax.random.PRNGKey(tc.seed)
        abstract_params = sharding_lib.unbox(jax.eval_shape(init_fn, rng)["params"])
        tx, schedule = optim.make_optimizer(tc.optimizer, tc.total_steps, abstract_params)
        ema = tc.optimizer.ema_decay > 0
        state, shardings = state_lib.abstract_train_state(init_fn, tx, mesh, rng, ema=ema)
        # the same construction as loop.run
        trainable = optim.trainable_mask(abstract_params, tc.optimizer) if tc.optimizer.frozen else None
        step = step_lib.jit_train_step(
            step_lib.make_train_step(loss_fn, tx, schedule=schedule, trainable=trainable,
                                     grad_accum_steps=tc.optimizer.grad_accum_steps,
                                     ema_decay=tc.optimizer.ema_decay, skip_nonfinite=tc.skip_nonfinite),
            shardings, mesh_lib.batch_sharding(mesh, 1))
        batch = abstract_batch(setup, mesh)
        lowered = step.lower(state, batch)
        # the check never runs the code: skip LLVM's expensive passes on CPU (buffer assignment, hence the memory
        # figures, comes from the HLO passes before codegen and does not change)
        fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
        compiled = lowered.compile(compiler_options=fast if jax.default_backend() == "cpu" else None)
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    ll = setup.model_config.llama
    tokens = c.data.batch_size * setup.spec.length
    frozen = (state.model_state or {}).get("frozen", {})
    kept, unused = _kept_inputs(lowered, (state, batch))
    lam_full_bytes = (per_device_bytes(lam_full, sharding_lib.param_shardings(lam_full, mesh))
                      if lam_full is not None else None)
    return CompileReport(
        name=name or f"{c.recipe}:{c.preset}", mesh={k: int(v) for k, v in mesh.shape.items()},
        batch=int(c.data.batch_size), length=setup.spec.length, grad_accum=int(tc.optimizer.grad_accum_steps),
        remat=ll.remat, dtype=f"compute {ll.dtype} / params {ll.param_dtype}",
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), xla_flops=float((cost or {}).get("flops", 0.0)),
        model_flops=ll.flops_per_token(setup.spec.length) * tokens, num_layers=ll.num_layers,
        params=int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))),
        table=_param_table(state.params, shardings.params, top), compile_seconds=seconds,
        input_bytes=per_device_bytes(kept), unused_inputs=tuple(unused),
        lam_bytes=per_device_bytes(frozen.get("lam", {})), lam_full_bytes=lam_full_bytes,
        while_loops=_model_loops(compiled.as_text() or ""))


def make_mesh(shape: dict[str, int], num_devices: int) -> Mesh:
    """`mesh.make_mesh` over the first `num_devices` devices (fake CPU devices for the check)."""
    devices = jax.devices()
    if len(devices) < num_devices:
        raise RuntimeError(f"the mesh needs {num_devices} devices but JAX sees {len(devices)}: set XLA_FLAGS="
                           f"--xla_force_host_platform_device_count={num_devices} before JAX is imported")
    return mesh_lib.make_mesh(shape, devices=devices[:num_devices])


def abstract_builder(lam_config: Any | None, *, resolution: int, tiny_vqgan: bool,
                     text_vocab: int = 32000) -> tuple[Callable[[Any], Setup], Any]:
    """(config -> train.build's Setup from abstract frozen weights, the whole abstract LAM labeler or None): the LAM of
    `lam_config` (None: a layout without latent actions), LWM's VQGAN (`VQGANConfig()`) or a tiny one at
    `resolution`, and a `text_vocab`-id MarkerTokenizer."""
    latent = lam_api.abstract_latent_labeler(lam_config) if lam_config is not None else None
    vq_cfg = (vqgan.VQGANConfig(resolution=resolution, hidden_channels=8, channel_mult=(1, 1, 1, 1, 1),
                                num_res_blocks=1, z_channels=8, num_embeddings=32, embed_dim=8, num_groups=4)
              if tiny_vqgan else vqgan.VQGANConfig(resolution=resolution))
    vision = (vq_cfg, vqgan.param_shapes(vq_cfg))
    return (lambda c: build(c, latent, tokenizer=MarkerTokenizer(text_vocab), vision=vision)), latent


def executed_flops(config: Any, build_setup: Callable[[Any], Setup], mesh: Mesh) -> tuple[float, int]:
    """(FLOPs the step executes, global per step, as XLA counts them; while loops left in the compiles).

    XLA's cost analysis counts a while-loop body once (the scanned layers, gradient accumulation), so the step is
    compiled again with the layers unrolled (`scan_layers=False`) at 1 and 2 layers and without accumulation (the
    same batch in one pass: FLOPs are linear in the batch), and the count is extrapolated linearly to the preset's
    layers: F(L) = F(1) + (L - 1) (F(2) - F(1)). Remat recomputation (unrolled layers keep their remat policy) and
    the frozen VQGAN / LAM encoders are included. `build_setup`: abstract_builder's."""
    layers = int(build_setup(config).model_config.llama.num_layers)
    counts, loops = [], 0
    for n in (1, 2):
        c = copy.deepcopy(config)
        c.model.llama.num_layers, c.model.llama.scan_layers = n, False
        c.train.optimizer.grad_accum_steps = 1
        r = compile_train_step(build_setup(c), mesh, top=0)
        counts.append(r.xla_flops * r.devices)
        loops = max(loops, r.while_loops)
    return counts[0] + (layers - 1) * (counts[1] - counts[0]), loops


def check_config(config: Any, lam_config: Any | None, mesh_shape: dict[str, int], *, tiny_vqgan: bool,
                 text_vocab: int = 32000, name: str = "", measure_full_lam: bool = False,
                 count_executed_flops: bool = False) -> CompileReport:
    """Compiles the train step of a VideoLLaMA `config` on a `mesh_shape` mesh from abstract shapes: the LAM of
    `lam_config` (None: a layout without latent actions), LWM's VQGAN (`VQGANConfig()`) or a tiny one, and a
    `text_vocab`-id MarkerTokenizer. JAX must already see prod(mesh_shape) devices.

    The step carries the LAM as the trainer does (`train.build` keeps only what labelling reads,
    `lam.api.encoder_only`); the report gives its per-device bytes beside the whole LAM's. `measure_full_lam`
    compiles the step a second time with the whole LAM in its state and reports that compile's memory too.
    `count_executed_flops` adds `executed_flops` (two more, smaller compiles)."""
    build_setup, latent = abstract_builder(lam_config, resolution=config.data.resolution, tiny_vqgan=tiny_vqgan,
                                           text_vocab=text_vocab)
    setup = build_setup(config)
    mesh = make_mesh(mesh_shape, math.prod(mesh_shape.values()))
    lam_full = latent[1] if latent is not None else None
    report = compile_train_step(setup, mesh, name=name, lam_full=lam_full)
    if measure_full_lam and lam_full is not None:
        whole = dataclasses.replace(setup, frozen_weights={**setup.frozen_weights, "lam": lam_full})
        other = compile_train_step(whole, mesh, name=name, top=0)
        report.full_lam_argument_bytes, report.full_lam_total_bytes = other.argument_bytes, other.total_bytes
    if count_executed_flops:
        report.executed_flops, report.executed_loops_left = executed_flops(config, build_setup, mesh)
    return report
