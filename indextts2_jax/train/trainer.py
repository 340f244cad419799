"""The generic trainer: one readable loop for every stage.

Order (DESIGN.md "Training habits"): logging, mesh, input, ``jax.eval_shape`` of params and
optimizer state, shardings from the abstract shapes, jitted init straight into those shardings,
resume, the jitted step compiled ahead for the first batch (memory analysis logged and checked against
``config.memory``; each new length bucket or phase compiled once, when the run meets it, or the largest
bucket at start with ``memory.precompile_largest_bucket``), evals, loop.

A task whose step changes form during training (the vocoder's mel-only warm-up) names the steps where
its phases start (:meth:`Task.phase_starts`); the trainer compiles one step per phase, the first ahead
and the others when the run reaches them, and passes the phase to ``loss_fn`` as a static ``phase=``.

A stage plugs in as a :class:`Task`. The step is ``(state, batch) -> (state, metrics)``, jitted with
the state donated; per-step randomness is ``fold_in(rng, step)`` so a resumed run draws the same
numbers. Checkpoints hold two items: the train state and each host's Grain iterator state, so a
killed run resumes with the same data order. Resume order: a checkpoint in the workdir, then
``config.resume`` (another run's checkpoint dir), then ``config.init_from`` (params only), then
scratch.
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import json
import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax import sharding
from indextts2_jax.errors import ConfigError
from indextts2_jax.train.optim import make_optimizer

log = logging.getLogger("indextts2_jax.train")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; training stops without saving the broken state."""


class StepMemoryError(ConfigError):
    """A compiled train step needs more memory per device than the budget (``config.memory``)."""


def memory_limit_bytes(config) -> float | None:
    """The per-device budget of a train step: ``config.memory.limit_gb`` (GiB) when set, else the first local
    device's ``bytes_limit`` where its backend reports one (GPU, TPU), else None (no check: a CPU)."""
    gb = float(config.get("memory", {}).get("limit_gb", 0.0) or 0.0)
    if gb > 0:
        return gb * 2**30
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    return float(limit) if limit else None


def step_memory_bytes(compiled) -> float | None:
    """Bytes per device that a compiled step holds at its peak, by XLA's memory analysis: arguments + outputs
    + temporaries - aliased (donated) buffers. None where the backend gives no analysis."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if ma is None:
        return None
    return float(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                 - ma.alias_size_in_bytes)


def check_step_memory(compiled, limit: float | None, what: str, hints: str = "") -> float | None:
    """Raise :class:`StepMemoryError` when ``compiled`` needs more than ``limit`` bytes per device; returns the
    bytes it needs (None: unknown). ``what`` names the step (phase, batch shapes) in the message."""
    need = step_memory_bytes(compiled)
    if limit is None or need is None or need <= limit:
        return need
    raise StepMemoryError(
        f"the train step for {what} needs {need / 2**30:.2f} GiB per device (XLA's memory analysis) but the "
        f"budget is {limit / 2**30:.2f} GiB (config.memory.limit_gb, else the device's limit). To lower it: a "
        "smaller global_batch_size (with grad_accum_steps for the same batch per update), a smaller largest "
        "data.length_buckets, compute_dtype='bfloat16', more devices on mesh.fsdp"
        + (f"; this stage: {hints}" if hints else "") + ".")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


class Task:
    """What a training stage provides. Subclasses override the methods that apply.

    Batches are dicts of NumPy arrays whose leading dim is this host's share of the global batch.
    """

    name = "task"

    def __init__(self, config):
        self.config = config

    def example_batch(self) -> dict[str, np.ndarray]:
        """A local batch with the shapes used for init (the first bucket)."""
        raise NotImplementedError

    def largest_batch(self) -> dict[str, np.ndarray] | None:
        """A local batch of the largest shapes the run can meet (``config.memory.precompile_largest_bucket``
        compiles its step at start); None (default): the task has no larger batch than the ones it meets."""
        return None

    def memory_hints(self) -> str:
        """The stage's own options that lower a train step's memory, for the over-budget error."""
        return ""

    def init_params(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Any:
        """Params (may be boxed with logical axis names)."""
        raise NotImplementedError

    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, train: bool = True,
                phase: int | None = None):
        """``(scalar loss, {name: scalar metric})``. ``phase`` (a Python int, static): the index of the
        training phase (:meth:`phase_starts`) the step is in, None in evaluation, where the loss must take
        its full form. Metrics keep one structure in every phase. A subclass whose ``loss_fn`` has no
        ``phase`` parameter is called without it."""
        raise NotImplementedError

    def phase_starts(self) -> tuple[int, ...]:
        """Steps (0-based, increasing, > 0) at which the train step changes form: phase 0 runs before the
        first, phase k from the k-th on. Each phase is its own compiled step (no ``lax.cond`` in the step,
        so a phase skips the work it does not need on any number of devices). Default: one phase."""
        return ()

    def train_iterator(self, process_index: int, process_count: int) -> Iterator:
        """A Grain ``DatasetIterator`` (``get_state``/``set_state``) over local batches."""
        raise NotImplementedError

    def eval_iterator(self, process_index: int, process_count: int) -> Iterator | None:
        return None

    def tokens_in_batch(self, batch: Mapping[str, np.ndarray]) -> int:
        """Work units (tokens or frames) in a global batch, for throughput."""
        first = next(iter(batch.values()))
        return int(np.prod(first.shape[:2])) if first.ndim >= 2 else int(first.shape[0])

    def flops_per_step(self, batch: Mapping[str, np.ndarray], num_params: int) -> float:
        """Model FLOPs of one training step (for MFU); default 6 * params * tokens. A task with phases may
        take ``phase=`` (the trainer passes it when the signature has it)."""
        return 6.0 * num_params * self.tokens_in_batch(batch)

    def make_optimizer(self, total_steps: int):
        """``(tx, schedule)`` for this stage, or None for the config's default (``train/optim.py``).

        A stage whose parts need their own optimizer settings (the vocoder's generator and
        discriminators) overrides this; ``schedule(step)`` is logged as ``learning_rate``.
        """
        return None

    def post_update(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, step: jax.Array) -> Any:
        """Params after the optimizer update -> params (inside the jitted step; default: unchanged).

        For updates that are not gradient steps (the codec's dead-code replacement). Must be a pure
        function of its arguments, so that sharded, single-device and resumed runs agree. ``step``
        is the step just taken (0-based, traced), ``rng`` a key of its own for this step.
        """
        return params

    def select_init_params(self, restored: Any) -> Any:
        """The part of a converted checkpoint (``config.init_from``) that this stage trains."""
        return restored.get("params", restored) if isinstance(restored, Mapping) else restored

    def write_samples(self, params: Any, writer: Any, step: int) -> None:
        """Audio/mel images at eval time (process 0 only)."""


# Peak dense FLOP/s per device for MFU, by device kind substring (bfloat16 tensor cores; TPU bf16).
_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
               "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def peak_flops_per_device(config) -> float:
    configured = float(config.log.get("peak_flops", 0.0) or 0.0)
    if configured:
        return configured
    kind = getattr(jax.devices()[0], "device_kind", "")
    for key, val in _PEAK_FLOPS.items():
        if key.lower() in kind.lower():
            return val
    return 0.0


class MetricsWriter:
    """tensorboardX scalars/audio/images plus a JSONL file, written from process 0 only."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        self.tb = None
        self.jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.tb.add_scalar(f"{prefix}/{k}", v, step)
        self.jsonl.write(json.dumps({"step": step, "split": prefix, **{k: float(v) for k, v in values.items()}}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


def _checkpoint_manager(config, directory: str):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.checkpoint.keep),
        enable_async_checkpointing=bool(config.checkpoint.async_save),
        create=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data"), options=options)


def _save(mngr, step: int, state: TrainState, data_iter) -> None:
    import grain
    import orbax.checkpoint as ocp

    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=grain.checkpoint.CheckpointSave(data_iter)), force=True)


def _restore(mngr, step: int, abstract_state, data_iter):
    import grain
    import orbax.checkpoint as ocp

    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                           data=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored.state


def _tree_norm(tree) -> jax.Array:
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros(())


def _accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (tasks written before ``phase`` was added do not)."""
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def phase_at(starts: tuple[int, ...], step: int) -> int:
    """The phase of the 0-based ``step`` given :meth:`Task.phase_starts`."""
    return bisect.bisect_right(starts, step)


def step_flops(task: Task, batch: Mapping[str, np.ndarray], num_params: int, phase: int) -> float:
    """``task.flops_per_step`` of a step in ``phase`` (passed when the task's method takes it)."""
    if _accepts(task.flops_per_step, "phase"):
        return task.flops_per_step(batch, num_params, phase=phase)
    return task.flops_per_step(batch, num_params)


def build_step(task: Task, tx, schedule, phase: int = 0):
    """The train step of ``phase`` (a Python int: each phase is its own function to jit)."""
    kw = {"phase": phase} if _accepts(task.loss_fn, "phase") else {}

    def train_step(state: TrainState, batch, rng):
        step_rng = jax.random.fold_in(rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(state.params, batch, step_rng, True,
                                                                              **kw)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), state.params, updates)
        params = task.post_update(params, batch, jax.random.fold_in(step_rng, 1 << 30), state.step)
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=_tree_norm(grads), update_norm=_tree_norm(updates),
                       param_norm=_tree_norm(params), learning_rate=schedule(state.step))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def _phases_and_optimizer(config, task: Task):
    """(phase start steps, optax transformation, learning-rate schedule) of a run."""
    total_steps = int(config.total_steps)
    starts = tuple(int(s) for s in task.phase_starts())
    if list(starts) != sorted(set(starts)) or (starts and starts[0] <= 0):
        raise ValueError(f"{type(task).__name__}.phase_starts() = {starts}: expected increasing steps > 0")
    custom = task.make_optimizer(total_steps)
    tx, schedule = custom if custom is not None else make_optimizer(
        config.optimizer, total_steps, tuple(config.freeze), int(config.grad_accum_steps))
    return starts, tx, schedule


def _state_initializer(task: Task, tx, example_global):
    def init_state(r):
        params = task.init_params(r, example_global)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init_state


def _jit_step(task: Task, tx, schedule, phase: int, state_shardings):
    return jax.jit(build_step(task, tx, schedule, phase), out_shardings=(state_shardings, None), donate_argnums=(0,))


def compile_report(config, task: Task) -> dict[str, Any]:
    """Compile the train step (phase 0) for the first and the largest length bucket from abstract shapes, on
    the config's mesh, without initializing or reading any state; returns ``{"budget_gib", "params",
    "steps": [{"batch": shapes, "memory_bytes", "fits", "compile_s", "flops"}]}`` (memory per device by XLA's
    analysis; ``fits`` None where there is no budget or no analysis). ``experiments.train --compile_only``."""
    mesh = sharding.make_mesh(dict(config.mesh))
    rules = sharding.rules_from_config(config.logical_axis_rules)
    _, tx, schedule = _phases_and_optimizer(config, task)
    init_rng, step_rng = jax.random.split(jax.random.key(int(config.seed)))
    example = task.example_batch()
    abstract_state, state_shardings = sharding.state_shardings(
        _state_initializer(task, tx, sharding.global_batch(example, mesh)), mesh, rules, init_rng)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
                         state_shardings)
    limit = memory_limit_bytes(config)
    batches = [example, task.largest_batch()]
    steps = []
    with sharding.use_mesh(mesh, rules):
        fn = _jit_step(task, tx, schedule, 0, state_shardings)
        for local in [b for b in batches if b is not None]:
            batch = sharding.global_batch(local, mesh)  # an all-padding batch: only its shapes matter
            t0 = time.perf_counter()
            compiled = fn.lower(state, batch, step_rng).compile()
            need = step_memory_bytes(compiled)
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            steps.append({"batch": {k: tuple(v.shape) for k, v in batch.items()},
                          "memory_bytes": None if need is None else int(need),
                          "fits": None if need is None or limit is None else bool(need <= limit),
                          "compile_s": round(time.perf_counter() - t0, 1),
                          "flops": float((cost or {}).get("flops", 0.0))})
    return {"budget_gib": None if limit is None else round(limit / 2**30, 3), "mesh": dict(mesh.shape),
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params)), "steps": steps}


def train(config, workdir: str, task: Task, *, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train ``task`` under ``config`` in ``workdir``; returns a summary (last metrics, steps).

    ``stop_after_steps`` stops early (after saving) without changing the schedule (tests use it to
    simulate an interruption). The metrics writer and the checkpoint manager are closed however the run
    ends, a refused config or checkpoint included (an open tensorboardX writer fails at interpreter exit).
    """
    with contextlib.ExitStack() as cleanup:
        return _train(config, workdir, task, stop_after_steps, cleanup)


def _train(config, workdir: str, task: Task, stop_after_steps: int | None, cleanup: contextlib.ExitStack):
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    writer = MetricsWriter(workdir, is_main)
    cleanup.callback(writer.close)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)

    # Mesh and input.
    mesh = sharding.make_mesh(dict(config.mesh))
    rules = sharding.rules_from_config(config.logical_axis_rules)
    train_iter = task.train_iterator(jax.process_index(), jax.process_count())
    example = task.example_batch()

    # Abstract state and shardings; init straight into them.
    total_steps = int(config.total_steps)
    starts, tx, schedule = _phases_and_optimizer(config, task)
    rng = jax.random.key(int(config.seed))
    init_rng, step_rng = jax.random.split(rng)
    example_global = sharding.global_batch(example, mesh)
    memory_limit = memory_limit_bytes(config)
    init_state = _state_initializer(task, tx, example_global)
    abstract_state, state_shardings = sharding.state_shardings(init_state, mesh, rules, init_rng)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
    log.info("stage %s: %d params on mesh %s", task.name, num_params, dict(mesh.shape))

    ckpt_dir = os.path.join(workdir, "checkpoints")
    mngr = _checkpoint_manager(config, ckpt_dir)
    cleanup.callback(mngr.close)
    abstract_with_sharding = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings)

    with sharding.use_mesh(mesh, rules):
        if mngr.latest_step() is not None:
            start = mngr.latest_step()
            state = _restore(mngr, start, abstract_with_sharding, train_iter)
            log.info("resumed from %s at step %d", ckpt_dir, start)
        elif config.get("resume"):
            other = _checkpoint_manager(config, config.resume)
            cleanup.callback(other.close)
            start = other.latest_step()
            if start is None:
                raise FileNotFoundError(f"config.resume={config.resume!r} holds no checkpoint")
            state = _restore(other, start, abstract_with_sharding, train_iter)
            log.info("resumed from config.resume=%s at step %d", config.resume, start)
        else:
            if config.get("init_from"):  # the whole params tree comes from the checkpoint: no random init
                params = _load_init_params(config.init_from, task, abstract_state.params, state_shardings.params)
                state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), state_shardings.step),
                                   params=params,
                                   opt_state=jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params))
                log.info("initialized params from %s", config.init_from)
            else:
                state = jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=state_shardings)(init_rng)

        step_fns: dict[int, Any] = {}
        executables: dict[tuple, Any] = {}

        def step_fn_of(phase: int):
            if phase not in step_fns:
                step_fns[phase] = _jit_step(task, tx, schedule, phase, state_shardings)
                if phase:
                    log.info("phase %d of %s from step %d: compiling its train step", phase, task.name,
                             starts[phase - 1])
            return step_fns[phase]

        def executable_for(phase: int, batch):
            """The compiled step for ``phase`` and this batch's shapes (a length bucket): compiled ahead of
            its first call, once, with its compile time and memory analysis logged."""
            key = (phase, jax.tree.structure(batch), tuple((x.shape, x.dtype) for x in jax.tree.leaves(batch)))
            if key not in executables:
                t0 = time.perf_counter()
                executables[key] = step_fn_of(phase).lower(state, batch, step_rng).compile()
                shapes = {k: tuple(v.shape) for k, v in batch.items()} if isinstance(batch, Mapping) else ""
                log.info("compiled the train step (phase %d, %s) in %.1f s", phase, shapes,
                         time.perf_counter() - t0)
                try:
                    log.info("memory analysis: %s", executables[key].memory_analysis())
                except Exception:  # not every backend reports it
                    pass
                need = check_step_memory(executables[key], memory_limit, f"phase {phase}, batch {shapes}",
                                         task.memory_hints())
                if need is not None:
                    log.info("train step memory per device: %.2f GiB (budget %s)", need / 2**30,
                             "none" if memory_limit is None else f"{memory_limit / 2**30:.2f} GiB")
            return executables[key]

        step = int(state.step)
        # Compile first, for the batch the run starts with (not a stand-in of the first bucket's shapes,
        # which a short run or a resumed one may never meet): fetched now, trained on as the first step.
        pending = None
        if step < total_steps:
            local = next(train_iter)
            pending = (local, sharding.global_batch(local, mesh))
            executable_for(phase_at(starts, step), pending[1])
            largest = task.largest_batch() if config.get("memory", {}).get("precompile_largest_bucket") else None
            if largest is not None:  # the largest bucket now, not whenever the data first brings it
                executable_for(phase_at(starts, step), sharding.global_batch(largest, mesh))
        eval_fn = eval_step_fn(task)  # one jitted evaluation for the run (a new one per call compiled anew)

        stop = {"signal": False}

        def on_term(signum, frame):
            stop["signal"] = True

        previous = signal.signal(signal.SIGTERM, on_term)
        peak = peak_flops_per_device(config) * jax.device_count()
        last_metrics: dict[str, float] = {}
        window_t, window_tokens, window_steps = time.perf_counter(), 0, 0
        try:
            while step < total_steps:
                if pending is not None:
                    (local, batch), pending = pending, None
                else:
                    local = next(train_iter)
                    batch = sharding.global_batch(local, mesh)
                phase = phase_at(starts, step)
                state, metrics = executable_for(phase, batch)(state, batch, step_rng)
                step += 1
                window_steps += 1
                window_tokens += task.tokens_in_batch(local) * jax.process_count()
                at_log = step % int(config.log.every_steps) == 0 or step == total_steps
                at_ckpt = step % int(config.checkpoint.every_steps) == 0 or step == total_steps
                early = stop_after_steps is not None and step >= stop_after_steps
                if at_log or at_ckpt or stop["signal"] or early:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if not np.isfinite(values["loss"]):
                        raise NonFiniteLossError(
                            f"loss is {values['loss']} at step {step} (stage {task.name}); stopping without "
                            f"saving. Last good checkpoint: step {mngr.latest_step()} in {ckpt_dir}")
                    dt = time.perf_counter() - window_t
                    values["steps_per_second"] = window_steps / dt
                    values["tokens_per_second"] = window_tokens / dt
                    if peak:
                        flops = step_flops(task, local, num_params, phase) * jax.process_count()
                        values["mfu"] = flops * window_steps / dt / peak
                    window_t, window_tokens, window_steps = time.perf_counter(), 0, 0
                    last_metrics = values
                    if at_log:
                        writer.scalars(step, values)
                        if is_main:
                            print(f"[{task.name}] step {step}/{total_steps} loss {values['loss']:.4f} "
                                  f"lr {values['learning_rate']:.2e} {values['steps_per_second']:.2f} steps/s "
                                  f"{values['tokens_per_second']:.0f} tok/s"
                                  + (f" mfu {values['mfu']:.1%}" if "mfu" in values else ""), flush=True)
                    if at_ckpt or stop["signal"] or early:
                        _save(mngr, step, state, train_iter)
                if step % int(config.log.eval_every_steps) == 0 or step == total_steps:
                    ev = evaluate(task, state.params, mesh, int(config.log.num_eval_batches), eval_fn)
                    if ev:
                        writer.scalars(step, ev, prefix="eval")
                    if is_main and config.log.get("samples", True):
                        task.write_samples(state.params, writer.tb, step)
                if stop["signal"] or early:
                    log.info("stopping at step %d (%s)", step, "SIGTERM" if stop["signal"] else "stop_after_steps")
                    break
        finally:
            mngr.wait_until_finished()
            signal.signal(signal.SIGTERM, previous)
    return {"step": step, "metrics": last_metrics, "num_params": num_params}


def eval_step_fn(task: Task):
    """The jitted evaluation loss of ``task`` (``train=False``, the full form): build it once per run, so that
    every evaluation reuses its compiled programs."""

    def eval_step(params, batch):
        return task.loss_fn(params, batch, jax.random.key(0), False)

    return jax.jit(eval_step)


def evaluate(task: Task, params, mesh, num_batches: int, eval_fn=None) -> dict[str, float]:
    """Mean loss and metrics over ``num_batches`` batches of the task's eval iterator (``{}`` without one).
    ``eval_fn``: :func:`eval_step_fn`'s function, reused across calls (default: a new one, compiled anew)."""
    it = task.eval_iterator(jax.process_index(), jax.process_count())
    if it is None:
        return {}
    eval_fn = eval_fn if eval_fn is not None else eval_step_fn(task)
    sums: dict[str, float] = {}
    n = 0
    for _ in range(num_batches):
        try:
            local = next(it)
        except StopIteration:
            break
        loss, metrics = eval_fn(params, sharding.global_batch(local, mesh))
        values = {"loss": float(loss), **{k: float(v) for k, v in jax.device_get(metrics).items()}}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    return {k: v / n for k, v in sums.items()} if n else {}


def _load_init_params(path: str, task: Task, abstract_params, param_shardings):
    import orbax.checkpoint as ocp

    from indextts2_jax.convert.state_dict import check_params_match

    restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    params = task.select_init_params(restored)
    check_params_match(params, abstract_params, what=f"init_from={path}")
    return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, param_shardings)
