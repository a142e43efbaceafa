"""VideoLLaMA: heads at target positions, family mixing, action-slot encoders, lineage params files, cached decoding.

One tiny config with every family active; the jitted forwards share shapes so XLA compiles stay few.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_pretraining.convert.checkpoint import flatten
from latent_pretraining.convert.lwm import read_lwm_params
from latent_pretraining.convert.msgpack_stream import write_stream
from latent_pretraining.model.attention import KVCache
from latent_pretraining.model.llama import random_params
from latent_pretraining.model.llama_config import preset
from latent_pretraining.model.video_llama import (
    ACTION,
    ACTION_BIN,
    LATENT,
    PROPRIO,
    TEXT,
    VISION,
    VideoLlama,
    VideoLlamaConfig,
    abstract_params,
    count_params,
    from_lineage,
    init_params,
)
from latent_pretraining.training.sharding import param_specs

LLAMA = preset(
    "debug", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
    initializer_range=0.2,
)  # fmt: skip
CFG = VideoLlamaConfig(LLAMA, vision_vocab_size=20, latent_vocab_size=9, action_vocab_size=16, action_dim=3,
                       proprio_dim=2)  # fmt: skip
B, PREFIX, S = 2, 10, 4
L = PREFIX + S
ACT_POS = tuple(range(PREFIX, L))
PROP_POS = (8, 9)
VOCABS = {TEXT: 50, VISION: 20, LATENT: 9, ACTION_BIN: 16}


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda r: init_params(CFG, r))(jax.random.key(0))  # one compile instead of eager ops


def inputs(seed: int = 0):
    """Row 0: text, vision, latent and bin tokens, 2 proprio slots, 4 action slots. Row 1: discrete tokens only."""
    rng = np.random.default_rng(seed)
    fam = np.array(
        [
            [TEXT, TEXT, VISION, VISION, VISION, LATENT, LATENT, ACTION_BIN, PROPRIO, PROPRIO] + [ACTION] * S,
            [TEXT, VISION, VISION, LATENT, TEXT, ACTION_BIN, ACTION_BIN, TEXT, VISION, LATENT, TEXT, VISION, TEXT, 3],
        ],
        np.int32,
    )
    ids = np.stack([[rng.integers(VOCABS.get(int(f), 50)) for f in row] for row in fam]).astype(np.int32)
    kw = dict(
        actions=jnp.asarray(rng.normal(size=(B, S, CFG.action_dim)), jnp.float32),
        time=jnp.asarray([0.3, 0.8], jnp.float32),
        proprio=jnp.asarray(rng.normal(size=(B, 2, CFG.proprio_dim)), jnp.float32),
    )
    return jnp.asarray(ids), jnp.asarray(fam), kw


@functools.partial(jax.jit, static_argnames=("heads",))
def forward(params, ids, fam, actions, time, proprio, heads=None):
    head_positions = None if heads is None else dict(heads)
    return VideoLlama(CFG).apply(
        params, ids, fam, actions=actions, time=time, action_positions=ACT_POS, proprio=proprio,
        proprio_positions=PROP_POS, head_positions=head_positions,
    )  # fmt: skip


@jax.jit
def embed(params, ids, fam, actions, time, proprio):
    return VideoLlama(CFG).apply(
        params, ids, fam, actions=actions, time=time, action_positions=ACT_POS, proprio=proprio,
        proprio_positions=PROP_POS, method=VideoLlama.embed_inputs,
    )  # fmt: skip


def test_heads_at_positions_match_full_heads(params):
    ids, fam, kw = inputs()
    full = forward(params, ids, fam, **kw)
    assert set(full.logits) == {"text", "vision", "latent", "action_bins"}
    for name, v in (("text", 50), ("vision", 20), ("latent", 9), ("action_bins", 16)):
        assert full.logits[name].shape == (B, L, v) and full.logits[name].dtype == jnp.float32
    heads = (("text", (0, 1)), ("vision", (2, 3, 4)), ("latent", (5, 6)), ("action_bins", (7,)))
    part = forward(params, ids, fam, **kw, heads=heads)
    assert set(part.logits) == {name for name, _ in heads}
    for name, pos in heads:
        np.testing.assert_allclose(part.logits[name], full.logits[name][:, list(pos)], atol=1e-5, err_msg=name)
    assert part.velocity.shape == (B, S, CFG.action_dim) and part.velocity.dtype == jnp.float32
    np.testing.assert_allclose(part.velocity, full.velocity, atol=1e-5)
    vh = params["params"]["velocity_head"]
    want = full.hidden[:, list(ACT_POS)] @ vh["kernel"] + vh["bias"]
    np.testing.assert_allclose(full.velocity, want, atol=1e-5)
    only = forward(params, ids, fam, **kw, heads=(("latent", (5, 6)),))
    assert set(only.logits) == {"latent"}


def test_family_mixing_uses_each_positions_own_table(params):
    ids, fam, kw = inputs()
    p = params["params"]
    tables = {TEXT: p["transformer"]["wte"], VISION: p["vte"], LATENT: p["late"], ACTION_BIN: p["ate"]}
    emb = np.asarray(embed(params, ids, fam, **kw))
    assert np.isfinite(emb).all()
    for b in range(B):
        for i in range(L):
            f = int(fam[b, i])
            if f in tables:
                np.testing.assert_array_equal(emb[b, i], tables[f]["embedding"][int(ids[b, i])], err_msg=f"{b},{i}")
    # a new vision id changes only that vision position
    b, i = 1, 8
    assert int(fam[b, i]) == VISION
    emb2 = np.asarray(embed(params, ids.at[b, i].set((int(ids[b, i]) + 1) % 20), fam, **kw))
    changed = np.argwhere(np.any(emb2 != emb, axis=-1))
    assert changed.tolist() == [[b, i]]
    # out-of-range ids for other tables (and for slots replaced by encoders) do not matter
    wild = jnp.where(fam == ACTION, 10**6, jnp.where(fam == PROPRIO, -7, ids))
    wild = wild.at[0, 0].set(49)  # text id beyond every other table
    emb3 = np.asarray(embed(params, wild, fam, **kw))
    np.testing.assert_array_equal(emb3[0, 1:], emb[0, 1:])
    np.testing.assert_array_equal(emb3[0, 0], tables[TEXT]["embedding"][49])


def _action_encoder_np(p: dict, actions: np.ndarray, time: np.ndarray) -> np.ndarray:
    half = LLAMA.hidden_size // 4
    freqs = np.exp(-math.log(1e4) * np.arange(half) / (half - 1))
    t_emb = np.concatenate([np.sin(time[:, None] * freqs), np.cos(time[:, None] * freqs)], -1)
    a = actions @ p["linear_1"]["kernel"] + p["linear_1"]["bias"]
    h = np.concatenate([np.broadcast_to(t_emb[:, None], (*a.shape[:2], 2 * half)), a], -1)
    h = h @ p["linear_2"]["kernel"] + p["linear_2"]["bias"]
    h = h / (1 + np.exp(-h))
    return h @ p["linear_3"]["kernel"] + p["linear_3"]["bias"]


def test_encoders_only_where_family_matches(params):
    ids, fam, kw = inputs()
    p = jax.tree.map(np.asarray, params["params"])
    emb = np.asarray(embed(params, ids, fam, **kw))
    enc = _action_encoder_np(p["action_encoder"], np.asarray(kw["actions"]), np.asarray(kw["time"]))
    np.testing.assert_allclose(emb[0, list(ACT_POS)], enc[0], atol=1e-5)
    # row 1 holds other families at those slots: table embeddings, whatever the actions / proprio are
    kw2 = {**kw, "actions": kw["actions"] + 1.0, "proprio": kw["proprio"] - 2.0}
    emb2 = np.asarray(embed(params, ids, fam, **kw2))
    np.testing.assert_array_equal(emb2[1], emb[1])
    changed = sorted({int(i) for i in np.argwhere(np.any(emb2[0] != emb[0], axis=-1))[:, 0]})
    assert changed == [*PROP_POS, *ACT_POS]
    wte = p["transformer"]["wte"]["embedding"]
    np.testing.assert_array_equal(emb[1, 10], wte[int(ids[1, 10])])
    # proprio encoder: linear_1, linear_2 + SiLU, linear_3
    pe, x = p["proprio_encoder"], np.asarray(kw["proprio"])[0]
    h = x @ pe["linear_1"]["kernel"] + pe["linear_1"]["bias"]
    h = h @ pe["linear_2"]["kernel"] + pe["linear_2"]["bias"]
    h = (h / (1 + np.exp(-h))) @ pe["linear_3"]["kernel"] + pe["linear_3"]["bias"]
    np.testing.assert_allclose(emb[0, list(PROP_POS)], h, atol=1e-5)


def test_cached_action_decoding_matches_full_forward(params):
    ids, fam, kw = inputs()
    fam = fam.at[1, PREFIX:].set(ACTION)  # both rows: prefix then S action slots
    full = forward(params, ids, fam, **kw, heads=())
    model = VideoLlama(CFG)
    cache = KVCache.init(LLAMA, B, L)
    pre = jax.jit(lambda p, i, f, pr, c: model.apply(p, i, f, proprio=pr, proprio_positions=PROP_POS, cache=c,
                                                      head_positions={}))(
        params, ids[:, :PREFIX], fam[:, :PREFIX], kw["proprio"], cache
    )  # fmt: skip
    step = jax.jit(lambda p, i, f, a, t, c: model.apply(p, i, f, actions=a, time=t, action_positions=tuple(range(S)),
                                                         cache=c, head_positions={}))  # fmt: skip
    out = step(params, ids[:, PREFIX:], fam[:, PREFIX:], kw["actions"], kw["time"], pre.cache)
    assert out.logits == {} and int(out.cache.index) == L
    np.testing.assert_allclose(out.velocity, full.velocity, atol=1e-5)
    # a second Euler-style step from the same prefix cache reuses it
    out2 = step(params, ids[:, PREFIX:], fam[:, PREFIX:], kw["actions"] * 0.5, kw["time"] + 0.1, pre.cache)
    full2 = forward(params, ids, fam, kw["actions"] * 0.5, kw["time"] + 0.1, kw["proprio"], heads=())
    np.testing.assert_allclose(out2.velocity, full2.velocity, atol=1e-5)


def _lineage_file(path, cfg: VideoLlamaConfig, vipra: bool) -> None:
    """A LAPA (dte, delta_head, bin action_head) or ViPRA (late, biased action_head, encoders) params file, with the
    backbone in the scanned LWM layout and extra tables under transformer/."""
    d = cfg.llama.hidden_size
    flat = {
        k: np.zeros(v.shape, np.float32) for k, v in flatten(jax.eval_shape(lambda: random_params(cfg.llama))).items()
    }
    flat = {k[1:]: v for k, v in flat.items()}  # drop "params"
    flat[("transformer", "vte", "embedding")] = np.zeros((cfg.vision_vocab_size, d))
    flat[("vision_head", "kernel")] = np.zeros((d, cfg.vision_vocab_size))
    if vipra:
        flat[("transformer", "late", "embedding")] = np.zeros((cfg.latent_vocab_size, d))
        flat[("latent_actions_head", "kernel")] = np.zeros((d, cfg.latent_vocab_size))
        flat[("action_head", "kernel")] = np.zeros((d, cfg.action_dim))
        flat[("action_head", "bias")] = np.zeros((cfg.action_dim,))
        for name, (i, o) in {"linear_1": (cfg.action_dim, d // 2), "linear_2": (d, d), "linear_3": (d, d)}.items():
            flat[("action_encoder", name, "kernel")] = np.zeros((i, o))
            flat[("action_encoder", name, "bias")] = np.zeros((o,))
    else:
        flat[("transformer", "dte", "embedding")] = np.zeros((cfg.latent_vocab_size, d))
        flat[("transformer", "ate", "embedding")] = np.zeros((cfg.action_vocab_size, d))
        flat[("delta_head", "kernel")] = np.zeros((d, cfg.latent_vocab_size))
        flat[("action_head", "kernel")] = np.zeros((d, cfg.action_vocab_size))
    assert ("transformer", "h", "scan_decoder", "attention", "wq", "kernel") in flat
    write_stream(path, sorted(flat.items()))


@pytest.mark.parametrize("vipra", [False, True])
def test_lineage_params_file_matches_our_tree(tmp_path, vipra):
    cfg = CFG.replace(proprio_dim=0, latent_vocab_size=8 if not vipra else 9)
    cfg = cfg.replace(action_vocab_size=0) if vipra else cfg.replace(action_dim=0)
    _lineage_file(tmp_path / "params", cfg, vipra)
    loaded = flatten(from_lineage(read_lwm_params(tmp_path / "params")))
    ours = {k[1:]: v.shape for k, v in flatten(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))).items()}
    assert sorted(loaded) == sorted(ours)
    assert {k: v.shape for k, v in loaded.items()} == ours
    assert count_params({"params": loaded}) == sum(math.prod(s) for s in ours.values())
    renamed = from_lineage({"params": {"transformer": {}, "dte": 1, "delta_head": 2, "action_head": {"kernel": 3}}})
    assert renamed == {"params": {"transformer": {}, "late": 1, "latent_actions_head": 2, "action_head": {"kernel": 3}}}
    with pytest.raises(ValueError, match="collides"):
        from_lineage({"dte": 1, "late": 2})


def test_config_round_trip_and_sharding():
    assert VideoLlamaConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match="did you mean"):
        VideoLlamaConfig.from_dict({**CFG.to_dict(), "action_dims": 7})
    tied = CFG.replace(llama=LLAMA.replace(tie_embeddings=True), latent_vocab_size=0, action_dim=0, proprio_dim=0)
    assert tied.active_heads == ("text", "vision", "action_bins")
    tree = abstract_params(tied)["params"]
    assert set(tree) == {"transformer", "vte", "ate", "vision_head", "action_head"}
    mesh = jax.make_mesh((2, 2, 2), ("fsdp", "tp", "sp"), devices=jax.devices())
    specs = param_specs(abstract_params(CFG), mesh)["params"]  # every logical name has a rule
    assert specs["vte"]["embedding"] == jax.sharding.PartitionSpec("tp", ("fsdp", "sp"))
    assert specs["vision_head"]["kernel"] == jax.sharding.PartitionSpec(("fsdp", "sp"), "tp")
    assert specs["action_encoder"]["linear_3"]["kernel"] == jax.sharding.PartitionSpec("tp", ("fsdp", "sp"))
