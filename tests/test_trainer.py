"""The generic trainer on a toy task: loss falls, an interrupted and resumed run equals an uninterrupted
one, freezing by regex, NaN stop, phases (one compiled step per phase, also after a resume), the train step's
memory budget and the largest bucket compiled at start."""

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.train.trainer import NonFiniteLossError, StepMemoryError, step_memory_bytes, train
from tests.toy_task import ToyTask, toy_config

REPO = Path(__file__).resolve().parents[1]


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


class _CompileLog:
    """Counts XLA compilations by function name while active (jax's compile log, WARNING level)."""

    def __init__(self, caplog):
        self.caplog = caplog

    def __enter__(self):
        self.ctx = jax.log_compiles(True)
        self.ctx.__enter__()
        self.caplog.set_level("WARNING")
        self.caplog.clear()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    def count(self, name: str) -> int:
        return sum(f"Finished XLA compilation of jit({name})" in r.getMessage() for r in self.caplog.records)


def test_loss_falls_and_metrics_written(tmp_path, caplog):
    with _CompileLog(caplog) as compiles:
        out = train(toy_config(steps=60), str(tmp_path), ToyTask(toy_config(steps=60)))
    # one compile of the step (ahead of time, for the first batch; the loop calls that executable) and one of
    # the evaluation for its 3 calls (a jitted lambda per call compiled each time: 3)
    assert compiles.count("train_step") == 1 and compiles.count("eval_step") == 1
    losses = _losses(tmp_path)
    assert out["step"] == 60
    assert losses[60] < 0.5 * losses[5], losses
    assert (tmp_path / "tensorboard").is_dir()
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert any(r["split"] == "eval" for r in rows)
    assert {"grad_norm", "param_norm", "update_norm", "learning_rate", "tokens_per_second"} <= set(rows[0])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 40-step run (in-process; the subprocess runs compute the same numbers)."""
    workdir = tmp_path_factory.mktemp("ref")
    cfg = toy_config(steps=40)
    train(cfg, str(workdir), ToyTask(cfg))
    return _losses(workdir)


def test_resume_in_process_matches_uninterrupted(tmp_path, reference_run):
    cfg = toy_config(steps=40)
    first = train(cfg, str(tmp_path / "run"), ToyTask(cfg), stop_after_steps=17)
    assert first["step"] == 17
    second = train(cfg, str(tmp_path / "run"), ToyTask(cfg))
    assert second["step"] == 40
    a, b = reference_run, _losses(tmp_path / "run")
    for step in (20, 25, 30, 35, 40):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


def test_freeze_by_regex_keeps_params(tmp_path):
    import orbax.checkpoint as ocp

    cfg = toy_config(steps=10, freeze=("^hidden/",))
    train(cfg, str(tmp_path), ToyTask(cfg))
    mngr = ocp.CheckpointManager(str(tmp_path / "checkpoints"), item_names=("state", "data"))
    state = mngr.restore(10, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    task = ToyTask(cfg)
    init = task.init_params(jax.random.split(jax.random.key(cfg.seed))[0], task.example_batch())
    init = jax.tree.map(np.asarray, nn.unbox(init))
    np.testing.assert_array_equal(state["params"]["hidden"]["kernel"], init["hidden"]["kernel"])
    assert not np.allclose(state["params"]["out"]["kernel"], init["out"]["kernel"])


def test_nan_loss_stops_clearly(tmp_path):
    cfg = toy_config(steps=10)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 5"):
        train(cfg, str(tmp_path), ToyTask(cfg, nan_at_step=0))


class BucketedToyTask(ToyTask):
    """Batches carry an unused (n, L) array whose L is one of two length buckets (by the data); the stand-in
    example batch has a third L, which the run never meets."""

    @staticmethod
    def _with_pad(b):
        return {**b, "pad": np.zeros((b["x"].shape[0], 4 if b["x"][0, 0] > 0 else 8), np.float32)}

    def _dataset(self, process_index, process_count, seed):
        return super()._dataset(process_index, process_count, seed).map(self._with_pad)

    def example_batch(self):
        b = super().example_batch()
        return {**b, "pad": np.zeros((b["x"].shape[0], 2), np.float32)}


def test_compiles_the_buckets_the_run_meets_once_each(tmp_path, caplog):
    import itertools

    cfg = toy_config(steps=8, **{"log.eval_every_steps": 100})
    task = BucketedToyTask(cfg)
    met = [b["pad"].shape[1] for b in itertools.islice(task.train_iterator(0, 1), 10)]
    assert set(met[:8]) == {4, 8}, met  # both buckets in the run (the data decides; the seed is fixed)
    with _CompileLog(caplog) as compiles:
        train(cfg, str(tmp_path), task)
    # the first batch's bucket ahead of the loop, the other when met; never the example batch's L = 2
    assert compiles.count("train_step") == 2
    # resumed for 2 more steps: the buckets of steps 9 and 10 (the same data order), nothing for the stand-in
    cfg10 = toy_config(steps=10, **{"log.eval_every_steps": 100})
    with _CompileLog(caplog) as compiles:
        train(cfg10, str(tmp_path), BucketedToyTask(cfg10))
    assert compiles.count("train_step") == len(set(met[8:])), met


def test_largest_bucket_compiled_at_start_with_precompile(tmp_path, caplog):
    class Largest(BucketedToyTask):
        def largest_batch(self):
            b = super().example_batch()
            return {**b, "pad": np.zeros((b["x"].shape[0], 8), np.float32)}

    cfg = toy_config(steps=1, **{"log.eval_every_steps": 100})
    first = next(Largest(cfg).train_iterator(0, 1))["pad"].shape[1]
    assert first == 4  # the one step meets the small bucket only (the data decides; the seed is fixed)
    with _CompileLog(caplog) as compiles:
        train(cfg, str(tmp_path / "default"), Largest(cfg))
    assert compiles.count("train_step") == 1
    cfg.memory.precompile_largest_bucket = True
    with _CompileLog(caplog) as compiles:
        train(cfg, str(tmp_path / "precompiled"), Largest(cfg))
    assert compiles.count("train_step") == 2  # the met bucket and L = 8, before the step


def test_step_over_the_memory_budget_stops_before_its_first_step(tmp_path, caplog):
    cfg = toy_config(steps=4, **{"memory.limit_gb": 1e-6})  # ~1 KiB: the toy step holds more
    with pytest.raises(StepMemoryError, match=r"needs [0-9.]+ GiB per device .* budget is 0\.00 GiB") as err:
        train(cfg, str(tmp_path / "over"), ToyTask(cfg))
    assert "global_batch_size" in str(err.value) and "mesh.fsdp" in str(err.value)
    assert not (tmp_path / "over" / "metrics.jsonl").exists() or not _losses(tmp_path / "over")  # no step ran
    # within budget (the device's own limit on a GPU/TPU; a CPU reports none): trains, and logs the need
    cfg = toy_config(steps=4, **{"memory.limit_gb": 1.0})
    caplog.set_level("INFO", logger="indextts2_jax.train")
    train(cfg, str(tmp_path / "fits"), ToyTask(cfg))
    assert max(_losses(tmp_path / "fits")) == 4
    assert any("train step memory per device" in r.getMessage() for r in caplog.records)


def test_step_memory_counts_donated_buffers_once():
    f = jax.jit(lambda x: x * 2, donate_argnums=0)
    donated = step_memory_bytes(f.lower(jnp.ones((1024, 256))).compile())
    kept = step_memory_bytes(jax.jit(lambda x: x * 2).lower(jnp.ones((1024, 256))).compile())
    assert kept == pytest.approx(2 * 1024 * 256 * 4, rel=0.01)  # input + output
    assert donated == pytest.approx(1024 * 256 * 4, rel=0.01)  # the output reuses the input


class PhasedToyTask(ToyTask):
    """The toy loss scaled by 10 from step 3 on (phase 1); the phase is logged as a metric."""

    def __init__(self, config):
        super().__init__(config)
        self.flops_phases = []  # the phase of each flops_per_step call (the trainer's MFU)

    def phase_starts(self):
        return (3,)

    def loss_fn(self, params, batch, rng, train=True, phase=None):
        loss, metrics = super().loss_fn(params, batch, rng, train)
        scale = 1.0 if phase == 0 else 10.0
        return scale * loss, {**metrics, "phase": jnp.float32(-1 if phase is None else phase)}

    def flops_per_step(self, batch, num_params, phase=None):
        self.flops_phases.append(phase)
        return super().flops_per_step(batch, num_params)


def test_phases_compile_a_step_each_and_survive_resume(tmp_path, caplog):
    cfg = toy_config(steps=6, **{"log.every_steps": 1, "log.eval_every_steps": 6, "log.peak_flops": 1e12})
    task = PhasedToyTask(cfg)
    with _CompileLog(caplog) as compiles:
        train(cfg, str(tmp_path / "full"), task)
    assert compiles.count("train_step") == 2  # phase 0 ahead of time, phase 1 when the run reaches it
    rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    train_rows = {r["step"]: r for r in rows if r["split"] == "train"}
    # logged step s is the 0-based step s - 1: steps 0-2 in phase 0, 3-5 in phase 1
    assert [train_rows[s]["phase"] for s in range(1, 7)] == [0, 0, 0, 1, 1, 1]
    assert [r["phase"] for r in rows if r["split"] == "eval"] == [-1]  # evaluation: the full form
    np.testing.assert_allclose(train_rows[4]["loss"], 10 * train_rows[4]["mse"], rtol=1e-6)
    np.testing.assert_allclose(train_rows[3]["loss"], train_rows[3]["mse"], rtol=1e-6)
    assert task.flops_phases == [0, 0, 0, 1, 1, 1]  # MFU counts each step's own phase
    # stopped inside phase 1 and resumed: the resumed run starts in phase 1 with the same losses
    train(cfg, str(tmp_path / "resumed"), PhasedToyTask(cfg), stop_after_steps=4)
    second = PhasedToyTask(cfg)
    train(cfg, str(tmp_path / "resumed"), second)
    again = _losses(tmp_path / "resumed")
    assert second.flops_phases == [1, 1]
    for step in (5, 6):
        assert abs(again[step] - train_rows[step]["loss"]) <= 1e-6, step


def test_bad_phase_starts_refused(tmp_path):
    class Bad(ToyTask):
        def phase_starts(self):
            return (4, 2)

    import threading

    def writer_threads():  # tensorboardX's event-writer threads (alive until the writer is closed)
        return {t for t in threading.enumerate() if type(t).__name__ == "_EventLoggerThread" and t.is_alive()}

    before = writer_threads()
    cfg = toy_config(steps=4)
    with pytest.raises(ValueError, match="expected increasing steps > 0"):
        train(cfg, str(tmp_path), Bad(cfg))
    assert writer_threads() <= before  # the refused run closed its metrics writer


# The SIGKILL-and-restart and 8-device sharded-equals-single-device tests of the trainer run on the real
# stages (tests/test_train_gpt.py, tests/test_train_codec.py), which exercise this same loop end to end.


def test_compile_report_from_abstract_shapes(tmp_path):
    from indextts2_jax.train.trainer import compile_report

    class Largest(BucketedToyTask):
        def largest_batch(self):
            b = super().example_batch()
            return {**b, "pad": np.zeros((b["x"].shape[0], 8), np.float32)}

    cfg = toy_config(steps=4, **{"memory.limit_gb": 1.0})
    report = compile_report(cfg, Largest(cfg))
    assert report["params"] == 16 * 32 + 32 + 32 * 8 + 8 and report["budget_gib"] == 1.0
    assert [r["batch"]["pad"] for r in report["steps"]] == [(16, 2), (16, 8)]  # the example and the largest
    assert all(r["fits"] and 0 < r["memory_bytes"] < 2**20 and r["flops"] > 0 for r in report["steps"]), report
    cfg.memory.limit_gb = 1e-6
    assert [r["fits"] for r in compile_report(cfg, Largest(cfg))["steps"]] == [False, False]
    cfg.memory.limit_gb = 0.0  # a CPU reports no limit: nothing to check against
    assert [r["fits"] for r in compile_report(cfg, ToyTask(cfg))["steps"]] == [None]


def test_init_from_loads_the_params_without_a_random_init(tmp_path):
    import orbax.checkpoint as ocp

    class Counting(ToyTask):
        traces = 0

        def init_params(self, rng, batch):
            type(self).traces += 1
            return super().init_params(rng, batch)

    cfg = toy_config(steps=2, **{"optimizer.learning_rate": 0.0, "optimizer.weight_decay": 0.0})
    saved = nn.unbox(ToyTask(cfg).init_params(jax.random.key(7), ToyTask(cfg).example_batch()))
    saved = jax.tree.map(lambda x: x + 0.5, saved)  # not what a random init gives
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "init", saved)
    ckpt.wait_until_finished()
    cfg.init_from = str(tmp_path / "init")
    train(cfg, str(tmp_path / "wd"), Counting(cfg))
    assert Counting.traces == 1  # traced once for the shapes (jax.eval_shape), never run
    # learning rate 0: the trained params are the loaded ones
    restored = ocp.StandardCheckpointer().restore(tmp_path / "wd" / "checkpoints" / "2" / "state")
    got = restored["params"] if "params" in restored else restored
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stages_name_their_memory_options():
    from indextts2_jax.train.tasks import task_class

    for stage, key in (("gpt", "gpt.remat"), ("s2mel", "s2mel.attention"), ("vocoder", "vocoder.remat")):
        assert key in task_class(stage).memory_hints(None), stage  # plain methods: the error message calls them


class _SampleCountingToyTask(ToyTask):
    def __init__(self, config):
        super().__init__(config)
        self.samples_at = []

    def write_samples(self, params, writer, step):
        self.samples_at.append(step)


@pytest.mark.parametrize("samples", [True, False])
def test_log_samples_switches_the_samples_off(tmp_path, samples):
    cfg = toy_config(steps=6)
    cfg.log.eval_every_steps = 3
    cfg.log.num_eval_batches = 0
    cfg.log.samples = samples
    task = _SampleCountingToyTask(cfg)
    train(cfg, str(tmp_path), task)
    assert task.samples_at == ([3, 6] if samples else [])
