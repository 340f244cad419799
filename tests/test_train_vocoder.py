"""The vocoder stage (BigVGAN GAN training) on tiny synthetic audio: the mel loss falls, 8 sharded devices
(2,2,2) give the losses of one, a stopped and restarted run continues exactly, the per-part optimizer hook,
the gradient split of the single loss (G gets grad L_G, D gets grad L_D), the mel-only warm-up before
the discriminators join, samples logged, fine-tuning from
a converted official BigVGAN (generator only, discriminators from scratch).

Sizes: a 2-stage generator (16 x 16 = 256x), MPD periods 2, 3 and one small CQT discriminator, 16-frame
crops (4096 samples), batch 8. The training runs are subprocesses started together (they overlap on the
CPU cores) while the in-process tests run.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.subproc import cpu_env, metric_rows
from tests.subproc import rows_by_step as _train_rows

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
STOP = 6  # the interrupted run stops (and saves) here
SHARDED_STEPS = 3
LR = 2e-3
WARM_UP = 2  # mel-only steps before the discriminators join (the sharded run covers both kinds of step)

OVERRIDES = {
    "vocoder.segment_frames": 16,
    "vocoder.learning_rate": LR,
    "vocoder.discriminator_start_step": WARM_UP,
    "vocoder.discriminator_learning_rate": LR,
    "vocoder.mel_loss_windows": (32, 64, 128, 256),
    "vocoder.mel_loss_mels": (5, 10, 20, 40),
    "vocoder.discriminator.mpd_reshapes": (2, 3),
    "vocoder.discriminator.discriminator_channel_mult": 1 / 32,
    "vocoder.discriminator.cqtd_filters": 4,
    "vocoder.discriminator.cqtd_max_filters": 4,
    "vocoder.discriminator.cqtd_dilations": (1, 2),
    "vocoder.discriminator.cqtd_hop_lengths": (64,),
    "vocoder.discriminator.cqtd_n_octaves": (3,),
    "vocoder.discriminator.cqtd_bins_per_octaves": (12,),
    "vocoder.discriminator.cqtd_fmin": 32.70 * 2**6,  # 3 octaves up to ~15.8 kHz at the 2x rate: short CQT kernels
    "aux.bigvgan.upsample_rates": [16, 16],
    "aux.bigvgan.upsample_kernel_sizes": [32, 32],
    "aux.bigvgan.upsample_initial_channel": 16,
    "aux.bigvgan.resblock_kernel_sizes": [3],
    "aux.bigvgan.resblock_dilation_sizes": [[1]],
    "data.min_audio_seconds": 0.0,
    "log.eval_every_steps": STEPS,
    "checkpoint.every_steps": 1000,  # saves at the stop and at the end only
}


def vocoder_config(shards, steps=STEPS, **extra):
    from indextts2_jax.train.recipe import tiny_config

    return tiny_config("vocoder", shards, steps, **{**OVERRIDES, **extra})


_RUN = textwrap.dedent(
    """
    import sys
    from indextts2_jax.train.trainer import train
    from indextts2_jax.train.tasks.vocoder import VocoderTask
    from tests.test_train_vocoder import vocoder_config
    shards, mesh, *jobs = sys.argv[1:]
    for job in jobs:  # workdir:stop (stop 0 = run to the end); a workdir repeated resumes from its checkpoint
        workdir, stop = job.rsplit(":", 1)
        c = vocoder_config(shards)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in mesh.split(","))
        train(c, workdir, VocoderTask(c), stop_after_steps=int(stop) or None)
    print("DONE")
    """
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from indextts2_jax.train.recipe import write_synthetic_shards

    return write_synthetic_shards(tmp_path_factory.mktemp("vocoder_data") / "shards", num_utterances=24,
                                  valid_utterances=4, audio=True)


def _spawn(shards, jobs, cache_dir, mesh="-1,1,1", devices=1):
    # Compile-bound at these sizes: LLVM optimization level 0 compiles ~2x faster, and the persistent
    # compilation cache turns the later runs of a process (same programs) into cache hits.
    env = cpu_env(devices, cache_dir)
    return subprocess.Popen([sys.executable, "-c", _RUN, str(shards), mesh, *[f"{w}:{s}" for w, s in jobs]],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def started(shards, tmp_path_factory):
    """The training runs, started (not awaited). One process on one device: an uninterrupted run, then a
    run stopped at STOP and restarted; another on 8 devices (2,2,2) for SHARDED_STEPS steps."""
    root = tmp_path_factory.mktemp("vocoder_runs")
    procs = {"one": _spawn(shards, [(root / "one", 0), (root / "resumed", STOP), (root / "resumed", 0)],
                           root / "cache1"),
             "eight": _spawn(shards, [(root / "eight", SHARDED_STEPS)], root / "cache8", mesh="2,2,2", devices=8)}
    return root, procs


@pytest.fixture(scope="module")
def runs(started):
    root, procs = started
    for name, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"{name}:\n{out[-4000:]}"
    return {name: root / name for name in ("one", "resumed", "eight")}


def _random_params(task, batch, seed=0):
    """Random params of the task's tree drawn in NumPy (compiling a jitted init costs seconds on CPU)."""
    import flax.linen as nn

    from indextts2_jax.convert.tiny_official import random_params

    shapes = jax.eval_shape(lambda r: nn.unbox(task.init_params(r, batch)), jax.random.key(0))
    return jax.tree.map(jnp.asarray, random_params(shapes, np.random.default_rng(seed)))


def test_single_loss_splits_the_gradients(started, shards):
    """L_D gives the generator no gradient and L_G the discriminators none (no path at all: JAX's symbolic
    zeros), so grad(total = L_D + L_G) is grad L_G w.r.t. the generator and grad L_D w.r.t. the
    discriminators (total = d_loss + g_loss in loss_fn). That both parts do get gradients shows in the
    training runs (test_both_parts_train)."""
    from indextts2_jax.train.tasks.vocoder import VocoderTask

    task = VocoderTask(vocoder_config(shards))
    batch = {k: jnp.asarray(v[:2]) for k, v in task.first_batches(1)[0].items()}  # two rows keep it fast
    params = _random_params(task, batch)

    def cross_grads(p):
        def part(name):
            return lambda q: task.loss_fn(q, batch, jax.random.key(1))[1][name]

        return jax.grad(part("d_loss"))(p)["generator"], jax.grad(part("g_loss"))(p)["discriminator"]

    cross = jax.jit(cross_grads).lower(params).compile({"xla_backend_optimization_level": 0})(params)
    assert jax.tree.structure(cross[0]) == jax.tree.structure(params["generator"])
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(cross))


def test_mel_only_warm_up(started, shards):
    """Before ``discriminator_start_step`` (phase 0) the step is the generator's mel loss alone (no
    discriminator pass: zero gradients for the discriminators, zero adversarial terms, the generator's FLOPs
    only); from it on (phase 1), and in evaluation (phase None), the full GAN loss."""
    from indextts2_jax.train.tasks.vocoder import VocoderTask

    task = VocoderTask(vocoder_config(shards))
    assert task.phase_starts() == (WARM_UP,)
    assert VocoderTask(vocoder_config(shards, **{"vocoder.discriminator_start_step": 0})).phase_starts() == ()
    batch = {k: jnp.asarray(v[:2]) for k, v in task.first_batches(1)[0].items()}
    params = _random_params(task, batch, seed=1)

    def at(p, phase):
        return jax.value_and_grad(lambda q: task.loss_fn(q, batch, jax.random.key(1), True, phase=phase),
                                  has_aux=True)(p)

    def both(p):
        return at(p, 0), at(p, 1), at(p, None)

    (warm, g_warm), (gan, g_gan), (full, _) = (
        jax.jit(both).lower(params).compile({"xla_backend_optimization_level": 0})(params))
    lam = float(task.config.vocoder.lambda_mel)
    assert float(warm[1]["adversarial"]) == 0.0 and float(gan[1]["adversarial"]) == 1.0
    assert set(warm[1]) == set(gan[1])
    for key in ("d_loss", "g_adv", "feature_matching"):
        assert float(warm[1][key]) == 0.0 and float(gan[1][key]) > 0.0, key
    np.testing.assert_allclose(float(warm[0]), lam * float(warm[1]["mel_l1"]), rtol=1e-6)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(g_warm["discriminator"]))
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_gan["discriminator"])) > 0.0
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_warm["generator"])) > 0.0
    for key, value in full[1].items():  # the GAN phase is the full loss; the mel term is shared
        np.testing.assert_allclose(float(gan[1][key]), float(value), rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(float(warm[1]["mel_l1"]), float(full[1]["mel_l1"]), rtol=1e-6)
    local = task.first_batches(1)[0]
    assert 0 < task.flops_per_step(local, 0, phase=0) < task.flops_per_step(local, 0, phase=1)
    assert task.flops_per_step(local, 0) == task.flops_per_step(local, 0, phase=1)


def test_optimizer_groups_and_hook(shards):
    """Generator, MPD and CQTD/MRD are clipped separately (then AdamW); lr decays per step."""
    from indextts2_jax.train.tasks.vocoder import VocoderTask

    task = VocoderTask(vocoder_config(shards, **{"vocoder.grad_clip_norm": 1.0}))
    assert task.part_of("generator/conv_pre/kernel") == "generator"
    assert task.part_of("discriminator/mpd_2/convs_0/kernel") == "mpd"
    assert task.part_of("discriminator/cqtd_0/convs_0/kernel") == "spectral"
    tx, schedule = task.make_optimizer(10)
    np.testing.assert_allclose(float(schedule(0)), LR)
    np.testing.assert_allclose(float(schedule(2)), LR * 0.9999996**2, rtol=1e-6)
    params = {"generator": {"a": jnp.ones(3)},
              "discriminator": {"mpd_2": {"k": jnp.ones(4)}, "cqtd_0": {"k": jnp.ones(5)}}}
    grads = {"generator": {"a": jnp.full(3, 100.0)},
             "discriminator": {"mpd_2": {"k": jnp.full(4, 0.1)}, "cqtd_0": {"k": jnp.full(5, 100.0)}}}
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    # Adam's first moment after one step is (1 - b1) * clipped gradient (b1 = 0.8)
    mu = {group: state.inner_states[group].inner_state[1][0].mu for group in ("generator", "mpd", "spectral")}
    np.testing.assert_allclose(np.linalg.norm(mu["generator"]["generator"]["a"]), 0.2, rtol=1e-5)  # clipped to 1
    np.testing.assert_allclose(np.linalg.norm(mu["spectral"]["discriminator"]["cqtd_0"]["k"]), 0.2, rtol=1e-5)
    # the small MPD gradient (norm 0.2) is not scaled down by the others (one global clip would give 0.2 * 0.0008)
    np.testing.assert_allclose(np.asarray(mu["mpd"]["discriminator"]["mpd_2"]["k"]), 0.2 * 0.1, rtol=1e-5)


def test_init_from_converted_bigvgan(started, shards, tmp_path):
    """A converted official BigVGAN (plain layout) as init_from: the generator arrives weight-normed (folding
    it back gives the converted params), the discriminators fresh; the tree is the stage's param tree."""
    import flax.linen as nn
    import orbax.checkpoint as ocp

    from indextts2_jax.convert.state_dict import check_params_match
    from indextts2_jax.convert.tiny_official import bigvgan_to_torch, random_params
    from indextts2_jax.models import bigvgan
    from indextts2_jax.train.tasks.codec import save_params
    from indextts2_jax.train.tasks.vocoder import VocoderTask, prepare_init_from

    task = VocoderTask(vocoder_config(shards))
    gen_cfg = task.generator_config
    official = bigvgan_to_torch(random_params(bigvgan.abstract_params(gen_cfg), np.random.default_rng(0)), gen_cfg)
    converted_params = bigvgan.from_torch(official, gen_cfg)  # what the official-directory converter produces
    converted = tmp_path / "converted"
    save_params(converted_params, converted / "params" / "bigvgan.msgpack")
    meta = {"format": "indextts2-jax-converted", "version": 1,
            "components": {"bigvgan": {"file": "params/bigvgan.msgpack"}}}
    (converted / "converted.json").write_text(json.dumps(meta))
    init_from = prepare_init_from(converted, tmp_path / "finetune")
    assert init_from.endswith("init_from_bigvgan") and prepare_init_from(init_from, tmp_path) == init_from
    selected = task.select_init_params(ocp.StandardCheckpointer().restore(init_from))
    batch = task.example_batch()
    expected = jax.eval_shape(lambda r: nn.unbox(task.init_params(r, batch)), jax.random.key(0))
    check_params_match(selected, expected, what="vocoder init_from")  # what the trainer checks before loading
    assert "gain" in selected["generator"]["conv_pre"]  # weight-normed for training
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 bigvgan.remove_weight_norm(selected["generator"]), converted_params)
    assert all(np.abs(x).max() > 0 for x in jax.tree.leaves(selected["discriminator"]) if x.ndim >= 2)
    with pytest.raises(Exception, match="no BigVGAN generator"):
        task.select_init_params({"something": {"else": np.zeros(2)}})


def test_mel_loss_falls(runs):
    rows = _train_rows(runs["one"])
    assert max(rows) == STEPS
    first = np.mean([rows[s]["mel_l1"] for s in (1, 2, 3)])
    last = np.mean([rows[s]["mel_l1"] for s in range(STEPS - 2, STEPS + 1)])
    assert last < 0.5 * first, (first, last)  # measured: 4.49 -> 1.37
    for key in ("d_loss", "g_adv", "feature_matching", "mel_l1", "total", "d_real", "d_fake", "g_loss"):
        assert all(np.isfinite(r[key]) for r in rows.values()), key
    # the trainer passes the step: mel-only steps first, then the discriminators join
    assert [rows[s]["adversarial"] for s in range(1, WARM_UP + 2)] == [0.0] * WARM_UP + [1.0]
    assert rows[1]["d_loss"] == 0.0 and rows[WARM_UP + 1]["d_loss"] > 0.0
    # the trainer used the task's optimizer: the vocoder's lr (no warm-up), not config.optimizer's
    np.testing.assert_allclose(rows[1]["learning_rate"], LR, rtol=1e-6)
    np.testing.assert_allclose(rows[1]["loss"], rows[1]["total"], rtol=1e-6)


def test_sharded_equals_single_device(runs):
    a, b = _train_rows(runs["one"]), _train_rows(runs["eight"])
    assert max(b) == SHARDED_STEPS
    for step in range(1, SHARDED_STEPS + 1):
        for key in ("total", "d_loss", "mel_l1", "feature_matching"):
            # measured: <= 1e-7 relative
            assert abs(a[step][key] - b[step][key]) <= 1e-5 * max(1.0, abs(a[step][key])), (step, key, a[step][key],
                                                                                           b[step][key])


def test_stopped_run_resumes_exactly(runs):
    a, b = _train_rows(runs["one"]), _train_rows(runs["resumed"])
    assert max(b) == STEPS
    for step in range(STOP + 1, STEPS + 1):
        for key in ("total", "d_loss", "mel_l1"):
            assert abs(a[step][key] - b[step][key]) <= 1e-6, (step, key, a[step][key], b[step][key])


def test_both_parts_train(runs):
    """Generator and discriminators both move between the checkpoints at STOP and STEPS."""
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(str(runs["resumed"] / "checkpoints"), item_names=("state", "data"))
    a, b = (mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]
            for s in (STOP, STEPS))
    mngr.close()
    for part in ("generator", "discriminator"):
        moved = [float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in
                 zip(jax.tree.leaves(a[part]), jax.tree.leaves(b[part]))]
        assert max(moved) > 1e-4, part


def test_eval_and_samples_written(runs):
    evals = [r for r in metric_rows(runs["one"]) if r["split"] == "eval"]
    assert evals and np.isfinite(evals[-1]["mel_error"]) and np.isfinite(evals[-1]["mel_l1"])
    events = list((runs["one"] / "tensorboard").glob("events.out.tfevents.*"))
    data = b"".join(p.read_bytes() for p in events)
    for tag in (b"samples/generated", b"samples/real", b"samples/mel_generated"):
        assert tag in data, tag


def test_export_generator_params(runs, tmp_path):
    from indextts2_jax.models import bigvgan
    from indextts2_jax.train.tasks.codec import latest_params, load_params
    from indextts2_jax.train.tasks.vocoder import export_generator_params

    path = export_generator_params(runs["one"], tmp_path / "bigvgan.msgpack")
    exported = load_params(path)
    step, params = latest_params(runs["one"])
    assert step == STEPS and "gain" not in exported["conv_pre"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 exported, bigvgan.remove_weight_norm(params["generator"]))
