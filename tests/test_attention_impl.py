"""``LlamaConfig.attention_impl``: which kernel "auto" and the explicit values pick per backend / dtype / mask (a pure
function, ``choose_kernel``), and the Pallas splash kernel (interpret mode on CPU) and cuDNN flash attention (only with
a GPU) against the XLA path, outputs and gradients, for the causal, padding and bidirectional-block masks.

Run the cuDNN check by hand on a GPU machine: ``python tests/test_attention_impl.py cudnn`` (the pytest session here
is pinned to 8 fake CPU devices, so the test starts that script in a subprocess when a GPU is visible).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from latent_pretraining.model.attention import MaskSpec, key_block_ids, make_attention_mask
from latent_pretraining.model.attention_kernels import AttentionCase, attend, choose_kernel, mask_kind
from latent_pretraining.model.llama_config import LlamaConfig

# Splash: T must be a multiple of 128 (its tile); 256 with 128-tiles gives a 2 x 2 grid, so the kernel skips the
# empty upper tile of the causal mask and visits the block mask's partial tiles.
B, T, N, H = 2, 256, 2, 64
TILE = 128
# f32. A one-off run of the block + padding case (B 1) measured max differences of 3e-7 (outputs), 4e-6 (gradients).
FWD_TOL, GRAD_TOL = 2e-5, 1e-4


def _case(**over) -> AttentionCase:
    base = dict(backend="cpu", dtype="float32", mask="causal", cache=False, q_len=256, kv_len=256, head_dim=64)
    return AttentionCase(**{**base, **over})


# ---------------------------------------------------------------- dispatch (pure, no kernel runs)

@pytest.mark.parametrize("over, expected", [
    # GPU: cuDNN flash attention for half precision and every mask kind; otherwise the portable kernels.
    (dict(backend="gpu", dtype="bfloat16"), "cudnn"),
    (dict(backend="gpu", dtype="float16", mask="padding"), "cudnn"),
    (dict(backend="gpu", dtype="bfloat16", mask="block"), "cudnn"),
    (dict(backend="gpu", dtype="bfloat16", mask="custom"), "cudnn"),
    (dict(backend="gpu", dtype="float32"), "xla"),  # cuDNN flash has no f32
    (dict(backend="gpu", dtype="float32", kv_block=128), "blocked"),
    (dict(backend="gpu", dtype="bfloat16", mask="padding", cache=True, q_len=1, kv_len=300), "xla"),  # decoding
    (dict(backend="gpu", dtype="bfloat16", head_dim=256), "xla"),  # > 128 (Hopper-only in cuDNN)
    (dict(backend="gpu", dtype="bfloat16", head_dim=20), "xla"),  # not a multiple of 8
    (dict(backend="gpu", dtype="bfloat16", mask="block", q_len=255, kv_len=255), "xla"),  # bias needs even lengths
    (dict(backend="gpu", dtype="bfloat16", q_len=255, kv_len=255), "cudnn"),  # plain causal: no bias
    # TPU: splash for causal / padding / block self-attention with T % 128 == 0, in any dtype.
    (dict(backend="tpu"), "splash"),
    (dict(backend="tpu", dtype="bfloat16", mask="padding"), "splash"),
    (dict(backend="tpu", mask="block"), "splash"),
    (dict(backend="tpu", mask="custom"), "xla"),  # a caller-supplied full mask: no splash mapping
    (dict(backend="tpu", mask="padding", cache=True, q_len=1, kv_len=512), "xla"),
    (dict(backend="tpu", q_len=200, kv_len=200, q_chunk=100), "chunked"),
    # CPU: the portable kernels, as configured.
    (dict(), "xla"),
    (dict(dtype="bfloat16"), "xla"),
    (dict(kv_block=64, mask="block"), "blocked"),
    (dict(kv_block=64, mask="custom"), "xla"),
    (dict(q_chunk=128, mask="padding"), "chunked"),
    (dict(q_chunk=128, mask="block"), "xla"),  # not causal: chunks would miss later keys of the block
])
def test_auto_picks_by_backend_dtype_and_mask(over: dict, expected: str) -> None:
    assert choose_kernel("auto", _case(**over)) == expected


@pytest.mark.parametrize("impl, over, expected", [
    ("splash", dict(), "splash"),  # on CPU too (interpret mode)
    ("splash", dict(mask="padding", cache=True, q_len=1, kv_len=512), "xla"),  # decoding falls back
    ("splash", dict(q_len=100, kv_len=100, kv_block=32), "blocked"),  # T not a multiple of 128
    ("cudnn", dict(), "cudnn"),  # explicit: used as asked (JAX raises its own error off GPU / in f32)
    ("cudnn", dict(backend="gpu", dtype="bfloat16", cache=True, mask="padding", q_len=1, kv_len=9), "cudnn"),
    ("xla", dict(backend="gpu", dtype="bfloat16"), "xla"),
    ("xla", dict(backend="tpu", kv_block=128), "blocked"),  # "xla" = the portable kernels, knobs honoured
    ("xla", dict(q_chunk=64), "chunked"),
])
def test_explicit_values_and_their_fallbacks(impl: str, over: dict, expected: str) -> None:
    assert choose_kernel(impl, _case(**over)) == expected


def test_mask_kind_of_each_mask_spec() -> None:
    am = jnp.ones((1, 4), jnp.int32)
    ids = jnp.asarray([[0, 1, 1, 0]])
    m = make_attention_mask(am)
    assert mask_kind(MaskSpec(None)) == "causal"
    assert mask_kind(MaskSpec(m, causal=False)) == "custom"
    assert mask_kind(MaskSpec(m, key_valid=am.astype(bool), has_parts=True)) == "padding"
    assert mask_kind(MaskSpec(m, causal=False, key_valid=am.astype(bool), q_block=ids, k_block=ids,
                              has_parts=True)) == "block"


def test_unknown_attention_impl_is_one_line_listing_the_values() -> None:
    with pytest.raises(ValueError) as err:
        LlamaConfig(attention_impl="splsh")
    msg = str(err.value)
    assert "\n" not in msg and "'splsh'" in msg and "did you mean 'splash'" in msg
    assert all(v in msg for v in ("auto", "xla", "cudnn", "splash"))
    assert LlamaConfig(attention_impl="splash").attention_impl == "splash"


# ---------------------------------------------------------------- kernels against the XLA path

def _qkv(kv_heads: int, dtype=jnp.float32, seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, T, N, H), dtype)
    k = jax.random.normal(ks[1], (B, T, kv_heads, H), dtype)
    v = jax.random.normal(ks[2], (B, T, kv_heads, H), dtype)
    w = jax.random.normal(ks[3], (B, T, N, H), jnp.float32)  # cotangent weights for the gradient check
    return q, k, v, w


def _mask(kind: str) -> tuple[MaskSpec, jax.Array]:
    """(MaskSpec as the model builds it, [B, T] queries a loss may read: real tokens)."""
    if kind == "causal":
        return MaskSpec(None), jnp.ones((B, T), bool)
    # row 0: left padding and a block in the middle spanning the tile border; row 1: right padding, block at the end
    valid = jnp.ones((B, T), bool).at[0, :5].set(False).at[1, T - 7:].set(False)
    ids = jnp.zeros((B, T), jnp.int32).at[0, 100:160].set(1).at[1, 200:T - 7].set(2)
    am = valid.astype(jnp.int32)
    if kind == "padding":
        return MaskSpec(make_attention_mask(am), key_valid=valid, has_parts=True), valid
    spec = MaskSpec(make_attention_mask(am, block_ids=ids), causal=False, key_valid=valid, q_block=ids,
                    k_block=key_block_ids(ids, T), has_parts=True)
    return spec, valid


def _compare(impl: str, kind: str, kv_heads: int, dtype=jnp.float32, fwd_tol=FWD_TOL, grad_tol=GRAD_TOL) -> None:
    mask, rows = _mask(kind)
    q, k, v, w = _qkv(kv_heads, dtype)
    w = w * rows[:, :, None, None]  # padding queries' outputs are garbage in both paths; no loss reads them

    def loss(impl_name):
        def f(q, k, v):
            out = attend(q, k, v, mask, impl=impl_name, cache=False)
            return (out.astype(jnp.float32) * w).sum(), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    (_, out), grads = loss(impl)(q, k, v)
    (_, ref), ref_grads = loss("xla")(q, k, v)
    sel = rows[:, :, None, None]
    err = float(jnp.max(jnp.abs(jnp.where(sel, out.astype(jnp.float32) - ref.astype(jnp.float32), 0.0))))
    assert err < fwd_tol, f"{impl} {kind}: max |out - xla| = {err}"
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        gerr = float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
        scale = float(jnp.max(jnp.abs(r.astype(jnp.float32))))
        assert gerr < grad_tol * max(1.0, scale), f"{impl} {kind}: max |d{name} - xla| = {gerr} (scale {scale})"


@pytest.mark.slow  # Pallas interpret mode: ~10-20 s per case on a loaded CPU
@pytest.mark.parametrize("kind, kv_heads", [("causal", 2), ("padding", 1), ("block", 2), ("block", 1)])
def test_splash_matches_xla_outputs_and_grads(kind: str, kv_heads: int, monkeypatch) -> None:
    from latent_pretraining.model import splash

    monkeypatch.setattr(splash, "MAX_BLOCK", TILE)  # 128-tiles: a 2 x 2 grid at T = 256
    _compare("splash", kind, kv_heads)


@pytest.mark.slow
def test_splash_under_a_mesh_runs_per_shard_and_matches_xla(monkeypatch) -> None:
    """With a mesh set, the Pallas call runs inside shard_map: batch over dp, heads (N = K = 2) over tp."""
    from latent_pretraining.model import splash
    from latent_pretraining.training.mesh import make_mesh

    monkeypatch.setattr(splash, "MAX_BLOCK", TILE)
    with jax.set_mesh(make_mesh({"dp": 2, "fsdp": -1, "tp": 2})):
        _compare("splash", "block", 2)


def test_splash_under_a_mesh_is_traced_inside_shard_map() -> None:
    """Tracing only (no kernel run; the TPU kernel, which is never lowered here): batch over dp (fsdp does not divide
    B = 2), heads over tp; and no shard_map without a mesh."""
    from latent_pretraining.model.splash import splash_attention
    from latent_pretraining.training.mesh import make_mesh

    mask, _ = _mask("block")
    q, k, v, _ = _qkv(2)

    def f(q, k, v):
        return splash_attention(q, k, v, key_valid=mask.key_valid, block_ids=mask.q_block, interpret=False)

    assert "shard_map" not in str(jax.make_jaxpr(f)(q, k, v))
    with jax.set_mesh(make_mesh({"dp": 2, "fsdp": -1, "tp": 2})):
        text = str(jax.make_jaxpr(f)(q, k, v))
    assert "shard_map" in text and "pallas_call" in text
    assert "P('dp', None, 'tp', None)" in text, text[:2000]


def _gpu_visible() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl"))


@pytest.mark.skipif(not _gpu_visible(), reason="cuDNN flash attention needs an NVIDIA GPU; none is visible here")
def test_cudnn_matches_xla_on_gpu() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cuda"
    proc = subprocess.run([sys.executable, __file__, "cudnn"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _cudnn_main() -> None:
    """bf16 cuDNN vs bf16 XLA for every mask kind (outputs and gradients); raises on a mismatch."""
    assert jax.default_backend() == "gpu", f"needs a GPU backend, got {jax.default_backend()}"
    for kind in ("causal", "padding", "block"):
        for kv_heads in (2, 1):
            case = AttentionCase(backend="gpu", dtype="bfloat16", mask=kind, cache=False, q_len=T, kv_len=T,
                                 head_dim=H)
            assert choose_kernel("auto", case) == "cudnn", dataclasses.asdict(case)
            # bf16 both ways: tolerance at bf16 resolution (8 bits of mantissa) of O(1) values
            _compare("cudnn", kind, kv_heads, dtype=jnp.bfloat16, fwd_tol=3e-2, grad_tol=5e-2)
            print(f"cudnn == xla: {kind}, kv_heads={kv_heads}")


if __name__ == "__main__":
    if sys.argv[1:] != ["cudnn"]:
        raise SystemExit("usage: python tests/test_attention_impl.py cudnn   (on a machine with a GPU)")
    _cudnn_main()
