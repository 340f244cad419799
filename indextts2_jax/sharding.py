"""Device mesh and sharding from the config: the same code for 1 device, N simulated CPU devices,
one GPU and many hosts.

Mesh axes are ``("data", "fsdp", "tensor")``; ``config.mesh`` gives their sizes and one ``-1``
fills the remaining devices. Params carry logical axis names (``nn.with_logical_partitioning``);
``config.logical_axis_rules`` maps them to mesh axes. Shardings come from ``jax.eval_shape`` of the
(boxed) train state, so full params are never built on one host:

    abstract, shardings = state_shardings(init_fn, mesh, rules, rng, batch)
    init = jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)

Leaves without logical names (e.g. optimizer scalars, unannotated layers) are replicated, except
large ones, which fall back to FSDP: their largest dim divisible by the ``fsdp`` size is sharded
over ``fsdp``. A mesh axis that does not divide a dim is dropped for that dim (replicated) instead
of failing at compile time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from indextts2_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
FSDP_MIN_SIZE = 2**14  # unannotated leaves at least this large are sharded over fsdp


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve ``{"data": -1, "fsdp": 2, "tensor": 1}`` against ``num_devices``."""
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
    unknown = set(mesh_cfg) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"mesh config has unknown axes {sorted(unknown)}; valid: {MESH_AXES}")
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ConfigError(f"mesh config {dict(mesh_cfg)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh config {dict(mesh_cfg)}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ConfigError(f"mesh config {dict(mesh_cfg)}: {num_devices} devices not divisible by {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"mesh config {dict(mesh_cfg)} needs {math.prod(sizes)} devices, but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A ``Mesh`` over all (global) devices with axes ``("data", "fsdp", "tensor")``."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(dict(mesh_cfg), len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except Exception:  # CPU or unusual topologies: plain order
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Normalize ``config.logical_axis_rules`` (lists from a config file) to tuples."""
    out = []
    for rule in rules:
        name, target = rule
        if isinstance(target, list):
            target = tuple(target)
        out.append((str(name), target))
    return tuple(out)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return math.prod(mesh.shape[a] for a in axes)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop mesh axes that do not divide their dim; pad/trim the spec to the rank."""
    parts = list(spec) + [None] * (len(shape) - len(spec))
    parts = parts[: len(shape)]
    fitted = []
    for dim, axes in zip(shape, parts):
        if axes is None:
            fitted.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        keep = []
        for a in names:
            if dim % (_axis_size(mesh, tuple(keep) + (a,))) == 0:
                keep.append(a)
        fitted.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
    return P(*fitted)


def _fsdp_fallback(shape: tuple[int, ...], mesh: Mesh) -> P:
    n = mesh.shape.get("fsdp", 1)
    if n <= 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % n == 0:
            parts = [None] * len(shape)
            parts[i] = "fsdp"
            return P(*parts)
    return P()


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a (possibly boxed) abstract tree, with the fallbacks of the module doc.

    The result has the structure of the unboxed tree (empty nodes such as optax's ``MaskedNode``
    stay empty), so it can be zipped with ``nn.unbox(abstract_boxed)``.
    """
    rules = rules_from_config(rules)

    def one(leaf):
        if isinstance(leaf, nn.Partitioned):
            if not hasattr(leaf.value, "shape"):  # an empty node (optax MaskedNode) inside a box
                return leaf.value
            shape = tuple(leaf.value.shape)
            mesh_spec = _fit_spec(nn.logical_to_mesh_axes(tuple(leaf.names), rules), shape, mesh)
        else:
            mesh_spec = _fsdp_fallback(tuple(getattr(leaf, "shape", ())), mesh)
        return NamedSharding(mesh, mesh_spec)

    return jax.tree.map(one, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Sequence[tuple[str, Any]]):
    """Make ``mesh`` current and ``rules`` the logical-axis rules (for ``nn.with_logical_constraint``)."""
    set_mesh = getattr(jax, "set_mesh", None)
    with (set_mesh(mesh) if set_mesh is not None else mesh), nn.logical_axis_rules(rules_from_config(rules)):
        yield


def state_shardings(init_fn: Callable[..., Any], mesh: Mesh, rules, *args, **kwargs) -> tuple[Any, Any]:
    """``(abstract_unboxed_state, shardings)`` from ``jax.eval_shape(init_fn, *args)``; nothing is allocated."""
    abstract = jax.eval_shape(init_fn, *args, **kwargs)
    return nn.unbox(abstract), logical_shardings(abstract, mesh, rules)


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules, *args) -> tuple[Any, Any]:
    """Run ``init_fn`` jitted straight into its shardings. Returns ``(state, shardings)``."""
    _, shardings = state_shardings(init_fn, mesh, rules, *args)
    with use_mesh(mesh, rules):
        state = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return state, shardings


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dim over ``("data", "fsdp")``, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each host's local slice into global arrays sharded over the batch axes.

    Every host passes its own ``local_batch`` (leading dim = global batch / process count).
    """
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        sharding = batch_sharding(mesh, v.ndim)
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out
