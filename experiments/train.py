"""Train one IndexTTS-2 stage from a config.

    python -m experiments.train --config configs/demo.py:stage=codec --workdir runs/demo/codec \
        --config.data.shards=runs/demo/shards
    python -m experiments.train --config configs/demo.py:stage=gpt --workdir runs/demo/gpt \
        --config.data.shards=runs/demo/shards --config.codec_checkpoint=runs/demo/codec/codec_params.msgpack

The config is locked after parsing: an override of a key that does not exist
(``--config.typo=1``) fails loudly, as does an unknown ``key=value`` in the config argument.
``--dry_run`` resolves the config, writes ``<workdir>/config.json``, prints it and exits.

Stages: ``config.stage`` picks the Task from ``indextts2_jax.train.tasks.TASKS`` (``gpt``,
``codec``). The input is preprocessed shards (``config.data.shards``), made with
``python -m data_pipeline.preprocess``. A workdir that holds a checkpoint resumes by itself; SIGTERM
saves and stops. ``config.init_from`` may name a converted official checkpoint folder (GPT stage);
it is rewritten once as an Orbax checkpoint under the workdir. After the codec stage the trained
params are exported as ``<workdir>/codec_params.msgpack`` for the GPT stage's ``codec_checkpoint``.

Several hosts: start the same command on every host with

    --coordinator_address=HOST0:PORT --num_processes=N --process_id=I

(or the environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; ``--distributed`` alone lets ``jax.distributed.initialize()`` detect a
SLURM/TPU/MPI cluster). Each host reads its own rows of every global batch; checkpoints are
written by all hosts together (Orbax). CPU hosts use gloo collectives.

``--compilation_cache DIR``: JAX's persistent compilation cache (``indextts2_jax/compile_cache.py``); a run that
resumes, or a new run of the same config and shapes, reads its compiled steps there.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:stage=gpt.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Resolve and print the config, write config.json, exit 0.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Compile the train step for the first and the largest length bucket on the config's mesh "
    "(abstract state: no init, no checkpoint), print each one's memory per device against the budget "
    "(config.memory.limit_gb, else the device's limit) and its GFLOP, exit 0 (1 if one does not fit).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
                                   "host:port of process 0 (multi-host); default $JAX_COORDINATOR_ADDRESS.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0),
                                      "Number of processes (multi-host); default $JAX_NUM_PROCESSES.")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "-1") or -1),
                                   "This process's index (multi-host); default $JAX_PROCESS_ID.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with cluster auto-detection.")
_COMPILATION_CACHE = flags.DEFINE_string("compilation_cache", "",
                                         "JAX's persistent compilation cache folder: a resumed or repeated run "
                                         "reads its compiled steps there instead of compiling them again.")

log = logging.getLogger("indextts2_jax.train")


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
                           auto: bool = False) -> bool:
    """``jax.distributed.initialize`` when several processes are asked for; returns whether it ran."""
    import jax

    if coordinator or num_processes > 1:
        if not coordinator or num_processes < 1 or process_id < 0:
            raise app.UsageError("multi-host needs --coordinator_address, --num_processes and --process_id "
                                 f"(got {coordinator!r}, {num_processes}, {process_id})")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if auto:
        jax.distributed.initialize()
        return True
    return False


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required (e.g. --config configs/demo.py:stage=gpt)")
    workdir = _WORKDIR.value
    if not workdir:
        raise app.UsageError("--workdir is required")
    if _DRY_RUN.value:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
        print(config)
        print(f"resolved config written to {os.path.join(workdir, 'config.json')} (dry run: nothing trained)")
        return 0

    setup_logging()
    from indextts2_jax.train.tasks import TASKS

    if str(config.stage) not in TASKS:
        sys.exit(f"error: stage {config.stage!r} has no training task yet; implemented: {sorted(TASKS)}")
    if not str(config.data.get("shards", "") or ""):
        sys.exit("error: config.data.shards is not set. Preprocess the corpus into shards first, e.g.\n"
                 "  python -m data_pipeline.preprocess --config configs/demo.py:stage=gpt --manifest manifest.jsonl "
                 "--out runs/shards --features text_ids,mel_stacked --bpe_model bpe.model\n"
                 "then add --config.data.shards=runs/shards")
    if not os.path.isdir(str(config.data.shards)):
        sys.exit(f"error: config.data.shards={config.data.shards!r} does not exist; run data_pipeline.preprocess")

    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
    import jax

    from indextts2_jax import compile_cache

    if _COMPILATION_CACHE.value:
        log.info("persistent compilation cache: %s", compile_cache.enable(_COMPILATION_CACHE.value))

    from indextts2_jax.train.tasks import get_task
    from indextts2_jax.train.trainer import compile_report, train

    if _COMPILE_ONLY.value:
        report = compile_report(config, get_task(config))
        budget = "none (no device limit reported)" if report["budget_gib"] is None else f"{report['budget_gib']} GiB"
        print(f"stage {config.stage}: {report['params']} params, mesh {report['mesh']}, budget per device {budget}")
        for row in report["steps"]:
            fits = {None: "", True: "fits", False: "DOES NOT FIT"}[row["fits"]]
            mem = "?" if row["memory_bytes"] is None else f"{row['memory_bytes'] / 2**30:.3f}"
            shapes = {k: v for k, v in row["batch"].items() if len(v) > 1}  # the per-row scalars left out
            print(f"  batch {shapes}: {mem} GiB and {row['flops'] / 1e9:.3g} GFLOP per device, "
                  f"compiled in {row['compile_s']} s {fits}")
        return 1 if any(row["fits"] is False for row in report["steps"]) else 0

    if config.get("init_from") and config.stage in ("gpt", "s2mel", "vocoder"):
        import importlib

        # a converted official checkpoint folder -> an Orbax checkpoint of the stage's params (once)
        stage_module = importlib.import_module(f"indextts2_jax.train.tasks.{config.stage}")
        config.init_from = stage_module.prepare_init_from(config.init_from, workdir)
    from indextts2_jax.train.tasks import adapt_iterator_state

    if adapt_iterator_state(os.path.join(workdir, "checkpoints"), jax.process_index(), jax.process_count()):
        log.info("resuming with %d processes from a checkpoint of another host count", jax.process_count())
    task = get_task(config)
    log.info("stage %s, %d processes, %d devices", config.stage, jax.process_count(), jax.device_count())
    summary = train(config, workdir, task)
    if config.stage == "codec" and jax.process_count() == 1:
        from indextts2_jax.train.tasks.codec import export_codec_params

        path = export_codec_params(workdir)
        print(f"codec params exported to {path} (set the GPT stage's config.codec_checkpoint to it)")
    if _COMPILATION_CACHE.value:
        log.info("persistent compilation cache: %s", compile_cache.stats())
    if jax.process_index() == 0:
        print(json.dumps({"step": summary["step"], "num_params": summary["num_params"],
                          "metrics": summary["metrics"]}, default=float))
    return 0


def parse_flags_or_exit(argv: list[str]) -> list[str]:
    """Parse flags up front so a bad ``--config.<key>`` override gets a one-line error, not a traceback.

    Returns the remaining (positional) arguments.
    """
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        sys.exit(f"error: config override names a key that does not exist ({e}); overrides given: {overrides}")
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except Exception as e:  # ConfigError from get_config(arg), syntax errors in a config file
        sys.exit(f"error: cannot load config: {type(e).__name__}: {e}")


def run() -> None:
    """Console-script entry point."""
    remaining = parse_flags_or_exit(sys.argv)
    # flags are parsed once (parsing again would define the --config.* override flags twice)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=lambda _: remaining)


if __name__ == "__main__":
    run()
