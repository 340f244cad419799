"""Optimizer from the config: AdamW with linear warmup and cosine (or constant) decay, global-norm
gradient clipping, freezing by regex, optional gradient accumulation.

Param paths are the ``/``-joined dict keys (``"gpt/h_0/attn/c_attn/kernel"``); ``config.freeze`` is a
sequence of regexes searched in those paths; matching params get zero updates (and no optimizer
moments are kept for them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

from indextts2_jax.errors import ConfigError


def param_path(path: tuple) -> str:
    """``/``-joined dict keys of a tree path, skipping box attributes (``.value`` of Partitioned)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
    return "/".join(parts)


def make_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
    lr = float(opt_cfg.learning_rate)
    warmup = int(opt_cfg.warmup_steps)
    decay = str(opt_cfg.decay)
    if decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=max(warmup, 1), decay_steps=max(total_steps, warmup + 1),
            end_value=lr * float(opt_cfg.end_learning_rate_factor),
        )
    if decay == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [max(warmup, 1)]
        )
    raise ConfigError(f"optimizer.decay={decay!r}: expected 'cosine' or 'constant'")


def freeze_labels(params: Any, freeze: Sequence[str]) -> Any:
    """A tree like ``params`` with leaves ``"frozen"`` or ``"train"``."""
    patterns = [re.compile(p) for p in freeze]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if any(p.search(param_path(path)) for p in patterns) else "train", params
    )


def _decay_mask(params: Any) -> Any:
    # Decay matrices and conv kernels only; never norms, biases or 1-D gains.
    return jax.tree.map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def make_optimizer(opt_cfg: Any, total_steps: int, freeze: Sequence[str] = (), grad_accum_steps: int = 1):
    """Returns ``(tx, schedule)``."""
    if str(opt_cfg.name) != "adamw":
        raise ConfigError(f"optimizer.name={opt_cfg.name!r}: only 'adamw' is implemented")
    schedule = make_schedule(opt_cfg, total_steps)
    train_tx = optax.chain(
        optax.clip_by_global_norm(float(opt_cfg.grad_clip_norm)) if opt_cfg.grad_clip_norm else optax.identity(),
        optax.adamw(schedule, b1=float(opt_cfg.b1), b2=float(opt_cfg.b2), eps=float(opt_cfg.eps),
                    weight_decay=float(opt_cfg.weight_decay), mask=_decay_mask),
    )
    if freeze:
        tx = optax.multi_transform({"train": train_tx, "frozen": optax.set_to_zero()},
                                   lambda p: freeze_labels(p, tuple(freeze)))
    else:
        tx = train_tx
    if grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(grad_accum_steps))
    return tx, schedule
