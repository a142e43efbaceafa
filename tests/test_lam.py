"""LAM: quantizer gradients, dead-code replacement identical on all devices, causal decoder, labels, flow head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lam as lam_configs
from lam import config as lam_config
from lam import data as lam_data
from lam import losses, train
from lam.label import Labeler, fold_shift
from lam.model import LatentActionModel
from lam.quantizer import NSVQ, replace_dead_codes


def _cfg(preset: str):
    c = lam_configs.get_config(preset)
    c.data.cache_dir = ""
    return c


def _clip(cfg, b: int = 2, seed: int = 0) -> np.ndarray:
    r = cfg.model.image_size
    return np.random.default_rng(seed).integers(0, 256, (b, cfg.data.clip_len, r, r, 3), dtype=np.uint8)


def test_nsvq_gradients_reach_encoder_and_codebook() -> None:
    q = NSVQ(num_codes=4, dim=3)
    z = jax.random.normal(jax.random.PRNGKey(0), (10, 3))
    v = q.init({"params": jax.random.PRNGKey(1), "nsvq": jax.random.PRNGKey(2)}, z, train=True)

    def f(params, z):
        out, _ = q.apply({"params": params, "nsvq": v["nsvq"]}, z, train=True, rngs={"nsvq": jax.random.PRNGKey(3)},
                         mutable=["nsvq"])[0]
        return jnp.sum(out**2)

    gp, gz = jax.grad(f, argnums=(0, 1))(v["params"], z)
    assert float(jnp.abs(gz).sum()) > 0 and float(jnp.abs(gp["codebook"]).sum()) > 0
    hard, ids = q.apply(v, z, train=False)  # inference emits the codes themselves
    np.testing.assert_allclose(hard, v["params"]["codebook"][ids], rtol=0, atol=0)


def test_gradients_flow_through_quantizer_and_flow_head_shapes() -> None:
    cfg = _cfg("lapa_tiny")
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    params, ms = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    # the residual decoder's zero-initialised output layers would block every upstream gradient at step 0
    params = {**params, "to_pixels": {**params["to_pixels"], "kernel": 0.1 + params["to_pixels"]["kernel"]},
              "to_flow": {**params["to_flow"], "kernel": 0.1 + params["to_flow"]["kernel"]}}
    clip = _clip(cfg)
    r, n = cfg.model.image_size, cfg.data.clip_len - 1
    batch = {"clip": jnp.asarray(clip), "flow": jnp.ones((2, n, r, r, 2))}
    loss_fn = train.make_loss_fn(cfg)
    (loss, (metrics, new_ms)), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, batch, jax.random.PRNGKey(1), ms)
    assert np.isfinite(float(loss)) and float(metrics["flow"]) > 0
    # the encoder sits before the quantizer: non-zero grads there prove the path through NSVQ
    for path in (("code_encoder", "project_in", "kernel"), ("quantizer", "codebook"), ("patch_embed",)):
        node = g
        for k in path:
            node = node[k]
        assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(node)) > 0, path
    assert int(new_ms["nsvq"]["quantizer"]["calls"]) == 1
    assert float(new_ms["nsvq"]["quantizer"]["counts"].sum()) == 2 * n * cfg.model.code_grid**2
    out = jax.eval_shape(LatentActionModel(cfg.model).apply, {"params": params, **ms}, jnp.zeros((3, n + 1, r, r, 3)))
    assert out["flow"].shape == (3, n, r, r, 2) and out["pred"].shape == (3, n, r, r, 3)
    assert out["ids"].shape == (3, n, cfg.model.code_grid, cfg.model.code_grid)


def _encode(model_cfg, variables, x):
    model = LatentActionModel(model_cfg.copy_and_resolve_references())  # a snapshot: tests mutate their config
    return jax.jit(lambda v, x: model.apply(v, x, method=LatentActionModel.encode))(variables, x)


def _init_shapes(model_cfg, x):
    """Parameter shapes of a fresh model (traced, not run: config errors surface here too)."""
    model = LatentActionModel(model_cfg.copy_and_resolve_references())
    return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0), "nsvq": jax.random.PRNGKey(1)}, x))


def test_code_pool_mean_projects_the_grid_mean_into_every_slot() -> None:
    cfg = _cfg("lapa_tiny")
    assert cfg.model.code_pool == "mean"
    x = jnp.asarray(_clip(cfg), jnp.float32) / 255.0
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    z = _encode(cfg.model, variables, x)
    slots = variables["params"]["code_encoder"]["slots"]
    cfg.model.code_pool = "grid"  # the same weights minus the slot projection give the per-cell deltas
    params = {**variables["params"], "code_encoder": {k: v for k, v in variables["params"]["code_encoder"].items()
                                                      if k != "slots"}}
    zg = _encode(cfg.model, {**variables, "params": params}, x)
    g, dq = cfg.model.code_grid, cfg.model.quant_dim
    want = (zg.mean(axis=(2, 3)) @ slots["kernel"] + slots["bias"]).reshape(*zg.shape[:2], g, g, dq)
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-5)
    cfg.model.code_pool = "maximum"  # a typo'd variant fails loudly
    with pytest.raises(ValueError, match="code_pool"):
        _init_shapes(cfg.model, x)


@pytest.mark.parametrize("deltas", [True, False])
def test_code_pool_max_reads_each_channels_extremes_over_the_grid(deltas: bool) -> None:
    """code_pool='max': slots = a linear map of (max, −min) over the patch grid of the local features' change (LAPA)
    or of frame t+1's local features (ViPRA), checked against the computation written out."""
    from lam.model import CodeEncoder

    enc = CodeEncoder(quant_dim=8, grid=2, deltas=deltas, pool="max")
    feats = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8, 8, 16))
    params = enc.init(jax.random.PRNGKey(1), feats)["params"]
    z = enc.apply({"params": params}, feats)
    assert z.shape == (2, 2, 2, 2, 8)
    x = feats @ params["project_in"]["kernel"] + params["project_in"]["bias"]
    x = jax.nn.relu(jax.lax.conv_general_dilated(
        x.reshape(6, 8, 8, 8), params["local"]["kernel"][0], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["local"]["bias"]).reshape(2, 3, 8, 8, 8)
    x = x @ params["local_out"]["kernel"] + params["local_out"]["bias"]
    x = x[:, 1:] - x[:, :-1] if deltas else x[:, 1:]
    pooled = jnp.concatenate([x.max(axis=(2, 3)), -x.min(axis=(2, 3))], -1)
    want = (pooled @ params["slots"]["kernel"] + params["slots"]["bias"]).reshape(2, 2, 2, 2, 8)
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-5)


def test_normalized_codes_are_cosine_nearest_and_decode_from_ids() -> None:
    q = NSVQ(num_codes=5, dim=4, normalize=True)
    z = jax.random.normal(jax.random.PRNGKey(0), (7, 4)) * jnp.arange(1, 8)[:, None]  # lengths must not matter
    v = q.init({"params": jax.random.PRNGKey(1)}, z, train=False)
    out, ids = q.apply(v, z, train=False)
    cb = v["params"]["codebook"]
    cos = (z / jnp.linalg.norm(z, axis=-1, keepdims=True)) @ (cb / jnp.linalg.norm(cb, axis=-1, keepdims=True)).T
    np.testing.assert_array_equal(ids, jnp.argmax(cos, -1))
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    # the model's ids → codes path (labels → decoder) gives the same unit codes as its quantizer
    cfg = _cfg("lapa_tiny")
    cfg.model.quant_norm = True
    model = LatentActionModel(cfg.model)
    x = jnp.asarray(_clip(cfg), jnp.float32) / 255.0
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    z = _encode(cfg.model, variables, x)
    zq, ids = jax.jit(lambda z: model.apply(variables, z, train=False, method=LatentActionModel.quantize))(z)
    np.testing.assert_allclose(model.apply(variables, ids, method=LatentActionModel.codes_from_ids), zq, rtol=1e-6)


def test_slot_codebooks_search_and_replace_per_slot() -> None:
    """groups=G: slot g's id is the argmin over codebook g, usage is counted per slot, and a dead code is replaced
    only within its own slot's codebook."""
    g, k, d = 3, 5, 4
    q = NSVQ(num_codes=k, dim=d, groups=g)
    z = jax.random.normal(jax.random.PRNGKey(0), (7, g, d))
    v = q.init({"params": jax.random.PRNGKey(1), "nsvq": jax.random.PRNGKey(2)}, z, train=True)
    cb = v["params"]["codebook"]
    assert cb.shape == (g, k, d) and v["nsvq"]["counts"].shape == (g, k)
    out, ids = q.apply(v, z, train=False)
    for s in range(g):
        np.testing.assert_array_equal(ids[:, s], jnp.argmin(jnp.sum((z[:, s, None] - cb[s]) ** 2, -1), -1))
        np.testing.assert_array_equal(out[:, s], cb[s][ids[:, s]])
    _, new = q.apply(v, z, train=True, rngs={"nsvq": jax.random.PRNGKey(3)}, mutable=["nsvq"])
    counts = new["nsvq"]["counts"]
    np.testing.assert_array_equal(counts, np.stack([np.bincount(ids[:, s], minlength=k) for s in range(g)]))
    with pytest.raises(ValueError, match="groups=3"):
        q.apply(v, z[:, :2], train=False)
    # slot 0 uses codes 0-1 only, slot 1 all codes, slot 2 code 4 only: only slot 0's 2-4 and slot 2's 0-3 move
    state = {"shift": jnp.zeros((g, k, d)), "calls": jnp.array(10),
             "counts": jnp.array([[9.0, 9, 0, 0, 0], [4, 4, 4, 4, 4], [0, 0, 0, 0, 20]])}
    st, m = replace_dead_codes(cb, state, z, jax.random.PRNGKey(4), schedule=((10, 10, 1),), threshold=0.1)
    moved = np.any(np.asarray(st["shift"]) != 0, axis=-1)
    np.testing.assert_array_equal(moved, [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    assert float(m["codebook/replaced"]) == 7 and float(st["counts"].sum()) == 0 and int(st["calls"]) == 10
    # a dead code restarts at one of its own slot's vectors (source='batch', zero noise)
    st, _ = replace_dead_codes(cb, state, z, jax.random.PRNGKey(4), schedule=((10, 10, 1),), threshold=0.1,
                               noise=0.0)
    new_cb = cb + st["shift"]
    for s, c in ((0, 2), (2, 0)):
        assert np.min(np.abs(np.asarray(z[:, s]) - np.asarray(new_cb[s, c])).sum(-1)) < 1e-5


def test_model_slot_codebooks_decode_from_ids() -> None:
    cfg = _cfg("lapa_tiny")
    cfg.model.slot_codebooks = True
    model = LatentActionModel(cfg.model)
    x = jnp.asarray(_clip(cfg), jnp.float32) / 255.0
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    gg = cfg.model.code_grid**2
    assert variables["params"]["quantizer"]["codebook"].shape == (gg, cfg.model.codebook_size, cfg.model.quant_dim)
    shift = variables["nsvq"]["quantizer"]["shift"]  # a replacement happened: the effective codebook differs
    variables = {**variables, "nsvq": {"quantizer": {**variables["nsvq"]["quantizer"],
                                                     "shift": jax.random.normal(jax.random.PRNGKey(5), shift.shape)}}}
    z = _encode(cfg.model, variables, x)
    zq, ids = jax.jit(lambda z: model.apply(variables, z, train=False, method=LatentActionModel.quantize))(z)
    assert ids.shape == z.shape[:-1] and zq.shape == z.shape
    np.testing.assert_allclose(model.apply(variables, ids, method=LatentActionModel.codes_from_ids), zq, rtol=1e-6)
    folded = fold_shift(variables)  # labelling folds the per-slot shifts into the per-slot codebooks
    assert not np.any(np.asarray(folded["nsvq"]["quantizer"]["shift"]))
    np.testing.assert_array_equal(Labeler(cfg, folded)(x).reshape(ids.shape), ids)


def test_patch4_encoder_with_its_own_patch8_decoder() -> None:
    cfg = _cfg("lapa_tiny")
    x = jnp.asarray(_clip(cfg), jnp.float32) / 255.0
    # a 16×16 patch grid needs 3 stride-2 convs down to the 2×2 codes; the decoder embeds its own 8-px patches
    cfg.model.patch_size, cfg.model.decoder.patch_size = 4, 8
    model = LatentActionModel(cfg.model.copy_and_resolve_references())
    v = jax.jit(lambda x: model.init({"params": jax.random.PRNGKey(0), "nsvq": jax.random.PRNGKey(1)}, x))(x)
    assert v["params"]["patch_embed"]["Dense_0"]["kernel"].shape[0] == 4 * 4 * 3
    assert v["params"]["dec_patch_embed"]["Dense_0"]["kernel"].shape[0] == 8 * 8 * 3
    assert "conv2" in v["params"]["code_encoder"] and "conv3" not in v["params"]["code_encoder"]
    assert v["params"]["to_pixels"]["kernel"].shape[-1] == 8 * 8 * 3
    out = jax.jit(model.apply)(v, x)
    r, g = cfg.model.image_size, cfg.model.code_grid
    assert out["pred"].shape == (2, 1, r, r, 3) and out["flow"].shape == (2, 1, r, r, 2)
    assert out["ids"].shape == (2, 1, g, g)
    # the decoder's queries come from its own embedding: changing the encoder's patch embedding leaves pred alone
    q = jnp.ones((2, 1, g, g, cfg.model.quant_dim))
    p2 = {**v["params"], "patch_embed": jax.tree.map(lambda a: a + 1.0, v["params"]["patch_embed"])}
    dec = jax.jit(lambda p: model.apply({**v, "params": p}, x[:, :1], q, method=LatentActionModel.decode)[0])
    np.testing.assert_array_equal(dec(v["params"]), dec(p2))
    cfg.model.code_grid = 3
    with pytest.raises(ValueError, match="power of two"):
        _init_shapes(cfg.model, x)


def test_motion_stem_reads_frame_differences_only() -> None:
    from lam.model import MotionStem

    cfg = _cfg("lapa_tiny")
    assert cfg.model.encoder.motion_stem > 0
    stem = MotionStem(cfg.model.patch_size, cfg.model.dim, cfg.model.encoder.motion_stem)
    x = jnp.asarray(_clip(cfg, b=2), jnp.float32) / 255.0
    v = stem.init(jax.random.PRNGKey(0), x)
    v = jax.tree.map(lambda a: a + 0.1, v)  # non-zero conv biases: a zero difference gives a non-zero constant
    assert sorted(v["params"]) == ["conv0", "conv1", "conv2", "out"]  # 8-px patches: three stride-2 convs
    apply = jax.jit(stem.apply)
    out = apply(v, x)
    g = cfg.model.image_size // cfg.model.patch_size
    assert out.shape == (2, 2, g, g, cfg.model.dim)
    static = apply(v, jnp.stack([x[:, 0], x[:, 0]], 1))
    np.testing.assert_allclose(static[:, 1], static[:, 0], atol=1e-6)  # no motion: frame 1 looks like frame 0
    np.testing.assert_allclose(out[:, 0], static[:, 0], atol=1e-6)  # frame 0 always sees the zero difference
    bright = apply(v, x + 0.2)  # the stem sees differences, not the frames: a brightness shift changes nothing
    np.testing.assert_allclose(bright, out, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(out[:, 1] - out[:, 0]).max()) > 1e-3
    # in the model the stem feeds the encoder: frame 1's pixels move z, gradients reach the stem
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(_encode(cfg.model, {**variables, "params": p}, x) ** 2)))(
        variables["params"])
    assert float(jnp.abs(grads["motion_stem"]["conv0"]["kernel"]).sum()) > 0
    cfg.model.patch_size = 6
    cfg.model.image_size = 48
    with pytest.raises(ValueError, match="power-of-two patch"):
        _init_shapes(cfg.model, jnp.zeros((1, 2, 48, 48, 3)))


def test_replacement_moves_dead_codes_only() -> None:
    cb = jnp.arange(8 * 2, dtype=jnp.float32).reshape(8, 2)
    state = {"shift": jnp.zeros((8, 2)), "counts": jnp.array([50.0, 50, 0, 0, 0, 0, 0, 0]), "calls": jnp.array(10)}
    vecs = jax.random.normal(jax.random.PRNGKey(0), (32, 2))
    new, m = replace_dead_codes(cb, state, vecs, jax.random.PRNGKey(1), schedule=((10, 10, 1),), threshold=0.1)
    eff = cb + new["shift"]
    np.testing.assert_array_equal(eff[:2], cb[:2])
    assert not np.allclose(eff[2:], cb[2:]) and float(m["codebook/replaced"]) == 6 and float(new["counts"].sum()) == 0
    off, _ = replace_dead_codes(cb, {**state, "calls": jnp.array(11)}, vecs, jax.random.PRNGKey(1),
                                schedule=((10, 10, 1),), threshold=0.1)
    np.testing.assert_array_equal(off["shift"], state["shift"])  # off schedule: nothing changes


@pytest.mark.parametrize("groups", [1, 4])
def test_dead_code_replacement_identical_on_all_devices(groups: int) -> None:
    """Quantize a batch sharded over 8 devices and replace codes inside one jit: every replica's codebook is equal
    (one shared codebook, or one per slot)."""
    assert jax.device_count() == 8
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("dp",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("dp"))
    q = NSVQ(num_codes=8, dim=4, groups=groups)
    shape = (64, 4) if groups == 1 else (64, groups, 4)
    z = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), shape) + 3.0, shard)  # far from the N(0,1) codes
    v = jax.jit(lambda r: q.init({"params": r, "nsvq": r}, z, train=True), out_shardings=rep)(jax.random.PRNGKey(1))

    @jax.jit
    def step(v, z, rng):
        (_, _), new = q.apply(v, z, train=True, rngs={"nsvq": rng}, mutable=["nsvq"])
        state, m = replace_dead_codes(v["params"]["codebook"], new["nsvq"], z, jax.random.fold_in(rng, 1),
                                      schedule=((1, 10, 1),), threshold=0.1)
        return {"params": v["params"], "nsvq": state}, m

    v2, m = step(v, z, jax.random.PRNGKey(2))
    assert float(m["codebook/replaced"]) > 0
    eff = v2["params"]["codebook"] + v2["nsvq"]["shift"]
    assert float(jnp.abs(v2["nsvq"]["shift"]).sum()) > 0
    for arr in (eff, v2["nsvq"]["shift"], v2["nsvq"]["counts"]):
        shards = [np.asarray(s.data) for s in arr.addressable_shards]
        assert len(shards) == 8 and all(s.shape == arr.shape for s in shards)  # replicated, whole on every device
        for s in shards[1:]:
            np.testing.assert_array_equal(s, shards[0])


@pytest.mark.parametrize("n, null_kv, causal", [(2, 0, False), (4, 0, True), (3, 2, False)])
def test_small_attention_broadcast_path_matches_dot_path(monkeypatch, n, null_kv, causal) -> None:
    """Few-token attention (e.g. the 2-frame temporal layer) uses broadcast products; same output as the einsum."""
    from lam import layers

    attn = layers.Attention(heads=2, dim_head=8, null_kv=null_kv)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, n, 16))
    v = attn.init(jax.random.PRNGKey(1), x)
    pos = None if null_kv else jnp.arange(n)  # RoPE is for self-attention without null keys
    run = lambda: np.asarray(attn.apply(v, x, positions=pos, causal=causal))
    assert n * (n + null_kv) <= layers._SMALL_ATTN
    small = run()
    monkeypatch.setattr(layers, "_SMALL_ATTN", 0)
    np.testing.assert_allclose(small, run(), rtol=1e-5, atol=1e-5)


def test_causal_decoder_does_not_look_ahead() -> None:
    cfg = _cfg("vipra_tiny")
    model = LatentActionModel(cfg.model)
    v = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    # make the zero-initialised FiLM / output layers non-trivial
    v = {**v, "params": jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
                                     v["params"])}
    x = jnp.asarray(_clip(cfg), jnp.float32) / 255.0
    n = cfg.data.clip_len - 1
    codes = jax.random.normal(jax.random.PRNGKey(1), (2, n, cfg.model.code_grid, cfg.model.code_grid,
                                                       cfg.model.quant_dim))
    dec = jax.jit(lambda f, c: model.apply(v, f, c, method=LatentActionModel.decode))
    pred, flow = dec(x[:, :-1], codes)
    k = 1  # change the future: frame k.. and codes k..
    x2 = x.at[:, k:].set(jax.random.uniform(jax.random.PRNGKey(2), x[:, k:].shape))
    pred2, flow2 = dec(x2[:, :-1], codes.at[:, k:].add(1.0))
    np.testing.assert_allclose(pred2[:, :k], pred[:, :k], atol=1e-5)
    np.testing.assert_allclose(flow2[:, :k], flow[:, :k], atol=1e-5)
    assert float(jnp.abs(pred2[:, k:] - pred[:, k:]).max()) > 1e-3


def test_labels_deterministic() -> None:
    cfg = _cfg("vipra_tiny")
    v = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    v = {**v, "nsvq": {"quantizer": {**v["nsvq"]["quantizer"], "shift": jnp.ones_like(
        v["nsvq"]["quantizer"]["shift"])}}}
    clip = _clip(cfg, b=3)
    a = np.asarray(Labeler(cfg, v)(clip))
    b = np.asarray(Labeler(cfg, v)(clip))
    folded = np.asarray(Labeler(cfg, fold_shift(v))(clip))
    c = cfg.model.code_grid**2
    assert a.shape == (3, cfg.data.clip_len - 1, c) and a.dtype == np.int32
    assert a.min() >= 0 and a.max() < cfg.model.codebook_size
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, folded)  # folding the replacement shift into the codebook keeps the labels
    ids, z = map(np.asarray, Labeler(cfg, v).with_vectors()(clip))  # the evaluation's one-pass ids + vectors
    np.testing.assert_array_equal(ids, a)
    assert z.shape == (3, cfg.data.clip_len - 1, c * cfg.model.quant_dim) and np.isfinite(z).all()


def test_compose_flow_chains_steps() -> None:
    r = 8
    flow = np.zeros((4, r, r, 2), np.float16)
    flow[..., 0] = 1.0  # everything moves one pixel right per step
    out = lam_data.compose_flow(flow, np.array([0, 1]), np.array([3, 2]))
    np.testing.assert_allclose(out[0, ..., 0], 3.0)
    np.testing.assert_allclose(out[1, ..., 0], 2.0)
    assert float(losses.flow_weight(jnp.array(5), 0.1, 10, 10)) == 0.0
    assert abs(float(losses.flow_weight(jnp.array(15), 0.1, 10, 10)) - 0.05) < 1e-7


def test_flow_moving_power_shifts_weight_to_faster_movers() -> None:
    """Worked by hand: 4 pixels with target speeds 0, 0, 1, 3 px (along x), prediction 0, L1, moving weight 10.
    Per-pixel error (mean over the 2 components): 0, 0, 0.5, 1.5.
    power 0: weights 1, 1, 11, 11 -> (0.5·11 + 1.5·11) / 4 = 5.5.
    power 1: speeds 1, 3 over their mean 2 -> extra 10·0.5, 10·1.5 -> weights 1, 1, 6, 16 -> (3 + 24) / 4 = 6.75.
    power 2: 1, 9 over their mean 5 -> extra 2, 18 -> weights 1, 1, 3, 19 -> (1.5 + 28.5) / 4 = 7.5."""
    target = jnp.zeros((1, 1, 2, 2, 2)).at[0, 0, 1, 0, 0].set(1.0).at[0, 0, 1, 1, 0].set(3.0)
    pred = jnp.zeros_like(target)
    loss = lambda p: float(losses.flow_loss(pred, target, kind="l1", moving_weight=10.0, moving_power=p))
    assert abs(loss(0.0) - 5.5) < 1e-5 and abs(loss(1.0) - 6.75) < 1e-5 and abs(loss(2.0) - 7.5) < 1e-5
    # no moving pixel: the power changes nothing (no division by zero)
    still = jnp.full_like(target, 0.1)
    assert float(losses.flow_loss(pred, still, kind="l1", moving_weight=10.0, moving_power=2.0)) == pytest.approx(0.1)
    cfg = lam_configs.get_config("lapa_tiny")
    cfg.loss.flow_moving_power = -1.0
    with pytest.raises(ValueError, match=r"loss\.flow_moving_power must be >= 0"):
        lam_config.check(cfg)


def test_unknown_preset_suggests() -> None:
    with pytest.raises(KeyError, match="did you mean 'lapa_demo'"):
        lam_configs.get_config("lapa_dmo")


def test_direction_probe_sanity() -> None:
    """The evaluation probe reads a one-hot of the true direction perfectly and random codes at about chance."""
    from lam import evaluate

    rng = np.random.default_rng(0)
    ang = rng.uniform(0, 2 * np.pi, 2000)
    disp = 5 * np.stack([np.cos(ang), -np.sin(ang)], 1)  # y down
    y = evaluate.direction_bins(disp)
    assert np.all(evaluate.direction_bins(np.array([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0], [0.0, 1.0]])) == [0, 2, 4, 6])
    codes = np.stack([y, y, y, y], 1)
    probe = evaluate.fit_probe(evaluate.one_hot_codes(codes[:1000], 8), y[:1000], 8)
    assert np.mean(probe(evaluate.one_hot_codes(codes[1000:], 8)) == y[1000:]) == 1.0
    noise = rng.integers(0, 8, codes.shape)
    probe = evaluate.fit_probe(evaluate.one_hot_codes(noise[:1000], 8), y[:1000], 8)
    assert np.mean(probe(evaluate.one_hot_codes(noise[1000:], 8)) == y[1000:]) < 0.25


def test_probes_read_the_code_vectors_before_quantization_too() -> None:
    """probe/direction_acc_z: code vectors that hold the direction (cos, sin, on a scale far from 1) read near 1
    while code ids that lost it read near chance, so the evaluation says where the motion went missing."""
    import ml_collections

    from lam import evaluate

    rng = np.random.default_rng(2)

    def clips(n: int) -> dict[str, np.ndarray]:
        ang = rng.uniform(0, 2 * np.pi, n)
        disp = 4 * np.stack([np.cos(ang), -np.sin(ang)], 1)
        z = 50 + 10 * np.concatenate([disp, rng.normal(size=(n, 6))], 1)  # standardization undoes the scale
        return {"ids": rng.integers(0, 8, (n, 4)), "z": z, "disp": disp, "pos": rng.uniform(0, 64, (n, 2)),
                "dataset": np.zeros(n, int)}

    cfg = ml_collections.ConfigDict({"model": {"codebook_size": 8},
                                     "eval": {"min_motion": 1.0, "direction_bins": 8, "mlp_probe_hidden": 0}})
    res = evaluate.probes(clips(2000), clips(1000), cfg)
    assert res["probe/direction_acc_z"] > 0.9, res
    assert res["probe/direction_acc"] < 0.25 and res["probe/position_acc_z"] < 0.3, res
    # per-slot k-means (4 slots of 2 dims): slot 0 is the direction itself, so 8 codes fit to it keep most of it
    assert res["probe/direction_acc_kmeans8"] > 0.5 and res["probe/direction_acc_kmeans64"] > 0.7, res
    no_z = evaluate.probes({k: v for k, v in clips(500).items() if k != "z"}, clips(500), cfg)
    assert "probe/direction_acc_z" not in no_z and "probe/direction_acc_kmeans8" not in no_z


def test_probes_score_each_transition_of_a_multi_frame_clip() -> None:
    """Two transitions per clip, the first's ids hold the direction and the second's are noise: the pooled probe
    reads in between, the per-transition scores say which transition lost it (and they pool back to the total)."""
    import ml_collections

    from lam import evaluate

    rng = np.random.default_rng(3)

    def clips(n: int) -> dict[str, np.ndarray]:  # n clips of 2 transitions, rows clip-major as in collect()
        ang = rng.uniform(0, 2 * np.pi, 2 * n)
        disp = 4 * np.stack([np.cos(ang), -np.sin(ang)], 1)
        t = np.tile(np.arange(2), n)
        y = evaluate.direction_bins(disp)
        ids = np.where(t[:, None] == 0, y[:, None], rng.integers(0, 8, (2 * n, 4)))
        return {"ids": ids, "disp": disp, "pos": rng.uniform(0, 64, (2 * n, 2)), "dataset": np.zeros(2 * n, int),
                "transition": t}

    cfg = ml_collections.ConfigDict({"model": {"codebook_size": 8},
                                     "eval": {"min_motion": 1.0, "direction_bins": 8, "mlp_probe_hidden": 0}})
    test = clips(1000)
    res = evaluate.probes(clips(2000), test, cfg)
    t0, t1 = res["probe/direction_acc_transition0"], res["probe/direction_acc_transition1"]
    assert t0 > 0.9 and t1 < 0.3, res
    assert res["probe/direction_acc"] == pytest.approx((t0 + t1) / 2), res  # every row moves: equal halves
    one = evaluate.probes({k: v for k, v in clips(500).items() if k != "transition"}, test, cfg)
    assert "probe/direction_acc_transition0" in one  # keyed by the test clips
    single = {k: v[::2] for k, v in test.items()}
    single["transition"] = np.zeros(1000, int)
    assert not any("transition" in k for k in evaluate.probes(clips(500), single, cfg)), "one transition: no split"


def test_kmeans_probe_loses_a_direction_held_in_low_variance_dimensions() -> None:
    """A slot whose vector is (direction × 0.1, nuisance × 100): the standardized linear probe reads the direction,
    codebooks fit to the vectors as they are spend every code on the nuisance, so their ids read near chance."""
    from lam import evaluate

    rng = np.random.default_rng(3)

    def vectors(n: int) -> tuple[np.ndarray, np.ndarray]:
        ang = rng.uniform(0, 2 * np.pi, n)
        disp = np.stack([np.cos(ang), -np.sin(ang)], 1)
        return np.concatenate([0.1 * disp, 100 * rng.normal(size=(n, 2))], 1), evaluate.direction_bins(disp)

    (ztr, ytr), (zte, yte) = vectors(3000), vectors(1000)
    itr, ite = evaluate.kmeans_ids(ztr, zte, slots=1, k=8)
    assert itr.shape == (3000, 1) and ite.max() < 8
    acc = np.mean(evaluate.fit_probe(evaluate.one_hot_codes(itr, 8), ytr, 8)(evaluate.one_hot_codes(ite, 8)) == yte)
    assert acc < 0.25, acc
    mu, sd = ztr.mean(0), ztr.std(0)
    assert np.mean(evaluate.fit_probe((ztr - mu) / sd, ytr, 8)((zte - mu) / sd) == yte) > 0.9


def test_mlp_probe_reads_slot_combinations_the_linear_probe_cannot() -> None:
    """Direction held by whichever of two slots a third slot selects, the other slot random: the softmax regression
    can only vote slot by slot (about half right), the one-hidden-layer probe reads the combination."""
    from lam import evaluate

    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 8, n)
    sel = rng.integers(0, 2, n)
    r = rng.integers(0, 8, n)
    codes = np.stack([sel, np.where(sel == 0, y, r), np.where(sel == 1, y, r)], 1)
    x = evaluate.one_hot_codes(codes, 8)
    tr, te = slice(0, 3000), slice(3000, None)
    lin = np.mean(evaluate.fit_probe(x[tr], y[tr], 8)(x[te]) == y[te])
    mlp = np.mean(evaluate.fit_probe(x[tr], y[tr], 8, steps=1000, hidden=256)(x[te]) == y[te])
    assert lin < 0.75, lin
    assert mlp > 0.95, mlp
    noise = evaluate.one_hot_codes(rng.integers(0, 8, codes.shape), 8)
    assert np.mean(evaluate.fit_probe(noise[tr], y[tr], 8, steps=1000, hidden=256)(noise[te]) == y[te]) < 0.25
