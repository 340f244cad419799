"""Training stages as :class:`~indextts2_jax.train.trainer.Task` subclasses, looked up by ``config.stage``.

    from indextts2_jax.train.tasks import get_task
    task = get_task(config)          # config.stage in TASKS
    train(config, workdir, task)

:class:`PipelineTask` is the shared part of the stages that read preprocessed shards through
``data_pipeline.pipeline.make_pipeline``: per-host train iterator (Grain, checkpointable), an
evaluation iterator over the ``valid`` split when it exists, and example batches of the first
length bucket.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from indextts2_jax.errors import ConfigError
from indextts2_jax.train.trainer import Task

# stage name -> "module:Class" (imported lazily so that each stage's imports stay its own)
TASKS = {
    "gpt": "indextts2_jax.train.tasks.gpt:GptTask",
    "codec": "indextts2_jax.train.tasks.codec:CodecTask",
    "s2mel": "indextts2_jax.train.tasks.s2mel:S2melTask",
    "vocoder": "indextts2_jax.train.tasks.vocoder:VocoderTask",
}


def task_class(stage: str) -> type[Task]:
    if stage not in TASKS:
        raise ConfigError(f"stage {stage!r} has no training task yet; implemented: {sorted(TASKS)}")
    module, name = TASKS[stage].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ConfigError(f"stage {stage!r}: its task module {module} is not there (yet)") from None
    return getattr(mod, name)


def get_task(config) -> Task:
    """The Task of ``config.stage``."""
    return task_class(str(config.stage))(config)


class PipelineTask(Task):
    """A Task fed by ``make_pipeline(config, split, stage=self.name)`` (see data_pipeline/pipeline.py)."""

    name = "pipeline"

    def __init__(self, config):
        super().__init__(config)
        shards = str(config.data.get("shards", "") or "")
        if not shards:
            raise ConfigError(
                "config.data.shards is not set: preprocess the corpus first, e.g.\n"
                "  python -m data_pipeline.preprocess --config <config> --manifest manifest.jsonl --out SHARDS "
                "[--bpe_model bpe.model]\n"
                "then pass --config.data.shards=SHARDS")
        if not Path(shards).is_dir():
            raise ConfigError(f"config.data.shards={shards!r} does not exist; run data_pipeline.preprocess first")
        self.shards = shards
        self._host_pipeline = None

    # -- pipelines ----------------------------------------------------------------------------
    def pipeline(self, split: str = "train", process_index: int = 0, process_count: int = 1, **kw):
        from data_pipeline.pipeline import make_pipeline

        return make_pipeline(self.config, split, shards_dir=self.shards, stage=self.name,
                             process_index=process_index, process_count=process_count, **kw)

    def train_iterator(self, process_index: int, process_count: int):
        self._host_pipeline = self.pipeline("train", process_index, process_count)
        return iter(self._host_pipeline)

    def eval_iterator(self, process_index: int, process_count: int):
        try:
            p = self.pipeline("valid", process_index, process_count, num_epochs=1, shuffle=False, num_workers=0)
        except (FileNotFoundError, ValueError):  # no valid split (or too few records for one batch)
            return None
        return iter(p)

    def first_batches(self, count: int) -> list[dict[str, np.ndarray]]:
        """The first ``count`` *global* train batches (all rows, as one host of one would see them).

        The same on every host and for any host count, so init that depends on data is identical.
        """
        p = self.pipeline("train", 0, 1, num_workers=0)
        return [p.assemble(p.plan[k]) for k in range(count)]

    def example_batch(self) -> dict[str, np.ndarray]:
        """A local all-padding batch of the first bucket's shapes (this host's share of the batch)."""
        return self._padding_batch(largest=False)

    def largest_batch(self) -> dict[str, np.ndarray] | None:
        """A local all-padding batch of the largest bucket's shapes; None when that is the first bucket."""
        return self._padding_batch(largest=True)

    def _padding_batch(self, largest: bool) -> dict[str, np.ndarray] | None:
        import jax

        p = self.pipeline("train", jax.process_index(), jax.process_count(), num_workers=0)
        if largest and len(p.plan.buckets) < 2:
            return None
        bucket = len(p.plan.buckets) - 1 if largest else 0
        rows = np.full(p.plan.host_batch_size, -1, np.int64)
        return p.assemble({"step": 0, "epoch": 0, "bucket": bucket, "rows": rows})

    def dataset_meta(self) -> Mapping:
        path = os.path.join(self.shards, "dataset.json")
        return json.loads(Path(path).read_text()) if os.path.exists(path) else {}

    def tokens_in_batch(self, batch: Mapping[str, np.ndarray]) -> int:
        return int(np.sum(batch["semantic_lengths"]))


def adapt_iterator_state(checkpoint_dir: str | os.PathLike, process_index: int, process_count: int) -> bool:
    """Let a run with another host count resume from the latest checkpoint in ``checkpoint_dir``.

    The trainer saves each host's Grain iterator state as ``data/process_<i>-of-<n>.json``. The
    pipeline's batch plan is global (every host is at the same global batch index), so the states of
    all hosts are equal and any of them serves a different host count: when this host's file is
    missing, it is written from the others (refused if they differ). Returns whether it wrote one.
    """
    root = Path(checkpoint_dir)
    steps = [int(p.name) for p in root.glob("*") if p.name.isdigit() and (p / "data").is_dir()] if root.is_dir() \
        else []
    if not steps:
        return False
    data = root / str(max(steps)) / "data"
    mine = data / f"process_{process_index}-of-{process_count}.json"
    if mine.exists():
        return False
    others = sorted(data.glob("process_*-of-*.json"))
    if not others:
        return False
    states = {json.dumps(json.loads(p.read_text()), sort_keys=True) for p in others}
    if len(states) != 1:
        raise ValueError(f"{data}: the hosts' iterator states differ ({len(states)} kinds); cannot resume with "
                         f"{process_count} processes")
    tmp = mine.with_name(mine.name + f".{process_index}.tmp")
    tmp.write_text(others[0].read_text())
    os.replace(tmp, mine)
    return True


def converted_component_file(path: str | os.PathLike, component: str) -> Path | None:
    """The params file of ``component`` in a converted checkpoint folder; None if ``path`` is not one.

    A converted checkpoint folder holds ``converted.json`` (written by
    ``indextts2_jax.convert.official.save_converted``) naming each component's msgpack file.
    Raises ConfigError when the folder is one but lacks ``component``.
    """
    src = Path(path)
    meta = src / "converted.json"
    if not meta.is_file():
        return None
    comp = json.loads(meta.read_text()).get("components", {}).get(component)
    if comp is None:
        raise ConfigError(f"{src}: the converted checkpoint holds no {component!r} component")
    return src / comp["file"]


def write_init_checkpoint(out: str | os.PathLike, key: str, load) -> str:
    """Write ``{key: load()}`` (float32) once as an Orbax checkpoint at ``out`` (kept if there); its path.

    ``config.init_from`` of every stage reads such a checkpoint; ``load`` is only called when
    ``out`` does not exist yet (conversion is done once per workdir).
    """
    out = Path(out).resolve()
    if not out.exists():
        import jax
        import orbax.checkpoint as ocp

        params = load()
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(str(out), {key: jax.tree.map(lambda x: np.asarray(x, np.float32), params)})
        ckptr.wait_until_finished()
    return str(out)


def no_mesh():
    """A context without a mesh: host-side jitted calls (eval samples, frozen models) that must not pick up
    the training mesh's logical-axis sharding (jax.sharding.use_abstract_mesh of an empty mesh)."""
    import jax

    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ()))


def run_demo_stages(*args, **kwargs):
    """See :func:`indextts2_jax.train.recipe.run_demo_stages` (preprocess -> codec -> gpt)."""
    from indextts2_jax.train.recipe import run_demo_stages as run

    return run(*args, **kwargs)
