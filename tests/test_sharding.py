"""Mesh construction, the logical-axis rules, parameter shardings, and sharded vs single-device execution."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from latent_pretraining.model.attention import KVCache
from latent_pretraining.model.llama import LlamaForCausalLM, abstract_params, random_params
from latent_pretraining.model.llama_config import preset
from latent_pretraining.training import mesh as mesh_lib
from latent_pretraining.training import sharding

CFG = preset(
    "debug", vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    initializer_range=0.1,
)  # fmt: skip


def test_make_mesh_shapes_and_errors():
    m = mesh_lib.make_mesh({"dp": 1, "fsdp": -1, "tp": 2, "sp": 2})
    assert dict(m.shape) == {"dp": 1, "fsdp": 2, "tp": 2, "sp": 2}
    assert all(t == AxisType.Auto for t in m.axis_types)
    assert dict(mesh_lib.make_mesh("2,-1,1,1").shape)["fsdp"] == 4
    assert dict(mesh_lib.make_mesh([1, 8, 1, 1]).shape)["fsdp"] == 8
    assert dict(mesh_lib.make_mesh({"fsdp": -1}, devices=jax.devices()[:4]).shape)["fsdp"] == 4
    with pytest.raises(ValueError, match="do not divide the device count 8"):
        mesh_lib.make_mesh({"fsdp": -1, "tp": 3})
    with pytest.raises(ValueError, match="covers 4 devices but 8"):
        mesh_lib.make_mesh({"fsdp": 4})
    with pytest.raises(ValueError, match="at most one size may be -1"):
        mesh_lib.make_mesh({"fsdp": -1, "tp": -1})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        mesh_lib.make_mesh({"data": 8})
    assert mesh_lib.batch_spec(3, shard_sequence=True) == P(("dp", "fsdp"), "sp", None)
    assert mesh_lib.batch_sharding(m, 2).spec == P(("dp", "fsdp"), None)


def test_rules_divisibility_duplicates_and_fallback():
    m = mesh_lib.make_mesh({"fsdp": 2, "tp": 2, "sp": 2})
    assert sharding.spec_for((64, 128), ("embed", "mlp"), m) == P(("fsdp", "sp"), "tp")
    assert sharding.spec_for((6, 128), ("embed", "mlp"), m) == P("fsdp", "tp")  # 6 % 4 != 0: drop sp
    assert sharding.spec_for((97, 64), ("vocab", "embed"), m) == P(None, ("fsdp", "sp"))  # odd vocab: replicated
    assert sharding.spec_for((8, 16, 32), ("batch", "length", "act_embed"), m) == P("fsdp", "sp", None)
    assert sharding.spec_for((4, 4), ("embed", "embed"), m) == P(("fsdp", "sp"), None)  # an axis is used once
    assert sharding.spec_for((1024, 2048), None, m) == P(None, "fsdp")  # 8 MiB: FSDP on the largest dim
    assert sharding.spec_for((1024, 1025), None, m) == P("fsdp", None)  # largest dim not divisible
    assert sharding.spec_for((64, 64), None, m) == P()  # small: replicated
    with pytest.raises(ValueError, match="did you mean 'heads'"):
        sharding.spec_for((4, 4), ("embed", "head"), m)
    with sharding.logical_rules([("embed", None), ("mlp", "fsdp")]):
        assert sharding.spec_for((64, 128), ("embed", "mlp"), m) == P(None, "fsdp")


def test_param_shardings_of_model_and_optimizer_state():
    m = mesh_lib.make_mesh({"fsdp": 2, "tp": 2, "sp": 2})
    boxed = abstract_params(CFG)
    specs = sharding.param_specs(boxed, m)["params"]
    layer = specs["transformer"]["h"]["scan_decoder"]
    assert layer["attention"]["wq"]["kernel"] == P(None, ("fsdp", "sp"), "tp")
    assert layer["attention"]["wo"]["kernel"] == P(None, "tp", ("fsdp", "sp"))  # [L, N*H, D]
    assert layer["feed_forward"]["w2"]["kernel"] == P(None, "tp", ("fsdp", "sp"))
    assert specs["transformer"]["wte"]["embedding"] == P("tp", ("fsdp", "sp"))
    assert specs["lm_head"]["kernel"] == P(("fsdp", "sp"), "tp")
    names = sharding.logical_names(boxed)["params"]["transformer"]["h"]["scan_decoder"]
    assert names["attention"]["wq"]["kernel"] == ("layers", "embed", "heads")
    # optimizer states mirror the param tree and inherit its shardings; the step count is replicated
    opt_state = jax.eval_shape(optax.adamw(1e-3).init, boxed["params"])
    opt_specs = sharding.param_specs(opt_state, m)
    assert opt_specs[0].mu["lm_head"]["kernel"] == P(("fsdp", "sp"), "tp")
    assert opt_specs[0].count == P()
    shardings = sharding.param_shardings(boxed, m)
    assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(shardings))
    plain = sharding.unbox(boxed)
    assert jax.tree.structure(plain) == jax.tree.structure(shardings)
    cache = jax.eval_shape(lambda: KVCache.init(CFG, 4, 16))
    cache_sh = cache.shardings(m)
    assert cache_sh.k.spec == P(None, "fsdp", None, "tp", None) and cache_sh.index.spec == P()


def test_sharded_forward_equals_single_device():
    params = random_params(CFG, seed=2)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, CFG.vocab_size)
    mask = jnp.ones((2, 8), jnp.int32).at[1, :3].set(0)

    def forward(p, t, mask):
        return LlamaForCausalLM(CFG).apply(p, t, attention_mask=mask).logits

    ref = jax.jit(forward)(params, tokens, mask)
    m = mesh_lib.make_mesh((1, 2, 2, 2))
    shardings = sharding.param_shardings(abstract_params(CFG), m)
    sharded = jax.device_put(params, shardings)
    assert sharded["params"]["lm_head"]["kernel"].sharding.spec == P(("fsdp", "sp"), "tp")
    data = mesh_lib.batch_sharding(m, 2, shard_sequence=True)
    with jax.set_mesh(m):
        logits = jax.jit(forward, in_shardings=(shardings, data, data))(sharded, tokens, mask)
    assert logits.sharding.spec == P("fsdp", "sp", "tp")  # activations follow the logical constraints
    np.testing.assert_allclose(logits, ref, atol=1e-5)
