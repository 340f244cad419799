"""Mesh construction and shardings from logical axis names, on simulated CPU devices."""

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from indextts2_jax import sharding
from indextts2_jax.errors import ConfigError
from tests.subproc import cpu_env

REPO = Path(__file__).resolve().parents[1]


def test_mesh_shape_fill_and_errors():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"data": -1}, 1) == (1, 1, 1)
    with pytest.raises(ConfigError, match="at most one"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ConfigError, match="needs 4 devices"):
        sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ConfigError, match="unknown axes"):
        sharding.mesh_shape({"dp": 2}, 8)


def test_single_device_mesh_works():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    assert mesh.shape == {"data": 1, "fsdp": 1, "tensor": 1}


_MULTI = textwrap.dedent(
    """
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    from configs.common import LOGICAL_AXIS_RULES
    from indextts2_jax import sharding

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(64, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                         ("embed", "mlp")))(x)
            h = nn.with_logical_constraint(h, ("batch", "mlp"))
            return nn.Dense(256, name="plain")(jax.nn.gelu(h))  # unannotated: FSDP fallback

    mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    assert mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}, mesh.shape
    model, tx = MLP(), optax.adamw(1e-3)
    x = jnp.ones((8, 32))

    def init(rng):
        params = model.init(rng, x)["params"]
        return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

    abstract, shard = sharding.state_shardings(init, mesh, LOGICAL_AXIS_RULES, jax.random.key(0))
    assert shard["params"]["Dense_0"]["kernel"].spec == P("fsdp", "tensor"), shard["params"]["Dense_0"]["kernel"]
    assert shard["params"]["Dense_0"]["bias"].spec == P(), shard["params"]["Dense_0"]["bias"]
    assert shard["params"]["plain"]["kernel"].spec == P(None, "fsdp"), shard["params"]["plain"]["kernel"]
    assert shard["step"].spec == P()
    state, _ = sharding.sharded_init(init, mesh, LOGICAL_AXIS_RULES, jax.random.key(0))
    k = state["params"]["Dense_0"]["kernel"]
    assert k.sharding.spec == P("fsdp", "tensor") and len(k.addressable_shards) == 8
    assert state["opt"][0].count.sharding.spec == P()  # optax scalars replicated, not pinned to one device
    # same numbers as an unsharded init
    ref = model.init(jax.random.key(0), x)["params"]
    np.testing.assert_array_equal(np.asarray(k), np.asarray(nn.unbox(ref)["Dense_0"]["kernel"]))
    # a non-dividing axis is dropped instead of failing
    assert sharding._fit_spec(P("fsdp", "tensor"), (3, 8), mesh) == P(None, "tensor")
    b = sharding.global_batch({"x": np.arange(16).reshape(8, 2)}, mesh)
    assert b["x"].sharding.spec == P(("data", "fsdp"), None)
    print("OK")
    """
)


def test_shardings_on_eight_simulated_devices():
    env = cpu_env(8)
    r = subprocess.run([sys.executable, "-c", _MULTI], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
