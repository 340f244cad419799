"""A tiny regression task for testing the generic trainer (the real stages use the same loop)."""

import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from indextts2_jax.train.trainer import Task

DIM, OUT = 16, 8


class Regressor(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(32, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                     name="hidden")(x)
        h = nn.with_logical_constraint(jnp.tanh(h), ("batch", "mlp"))
        return nn.Dense(OUT, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                      ("mlp", "embed")), name="out")(h)


def _example(i: int) -> dict:
    rng = np.random.default_rng(int(i))
    x = rng.normal(size=(DIM,)).astype(np.float32)
    w = np.random.default_rng(1234).normal(size=(DIM, OUT)).astype(np.float32) / 4
    return {"x": x, "y": np.tanh(x @ w).astype(np.float32)}


class ToyTask(Task):
    name = "toy"

    def __init__(self, config, nan_at_step: int | None = None, seconds_per_batch: float = 0.0):
        super().__init__(config)
        self.model = Regressor()
        self.nan_at_step = nan_at_step
        self.seconds_per_batch = seconds_per_batch

    def _dataset(self, process_index, process_count, seed):
        ds = grain.MapDataset.range(512).shuffle(seed=seed).repeat()
        ds = ds[process_index::process_count].map(_example)
        ds = ds.batch(self.config.global_batch_size // process_count, drop_remainder=True)
        if self.seconds_per_batch:
            ds = ds.map(lambda b: (time.sleep(self.seconds_per_batch), b)[1])
        return ds

    def train_iterator(self, process_index, process_count):
        return iter(self._dataset(process_index, process_count, self.config.data.shuffle_seed).to_iter_dataset())

    def eval_iterator(self, process_index, process_count):
        return iter(self._dataset(process_index, process_count, 99).to_iter_dataset())

    def example_batch(self):
        n = self.config.global_batch_size // jax.process_count()
        return {"x": np.zeros((n, DIM), np.float32), "y": np.zeros((n, OUT), np.float32)}

    def init_params(self, rng, batch):
        return self.model.init(rng, batch["x"])["params"]

    def loss_fn(self, params, batch, rng, train=True):
        noise = 0.01 * jax.random.normal(rng, batch["x"].shape) if train else 0.0  # uses the step rng
        pred = self.model.apply({"params": params}, batch["x"] + noise)
        loss = jnp.mean((pred - batch["y"]) ** 2)
        if self.nan_at_step is not None:
            loss = loss * jnp.nan
        return loss, {"mse": loss}


def toy_config(steps=40, batch=16, **overrides):
    c = common.training_defaults()
    c.total_steps = steps
    c.global_batch_size = batch
    c.optimizer.learning_rate = 3e-2
    c.optimizer.warmup_steps = 2
    c.checkpoint.every_steps = 10
    c.checkpoint.async_save = False
    c.log.every_steps = 5
    c.log.eval_every_steps = 20
    c.log.num_eval_batches = 2
    c.mesh.data = -1
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c
