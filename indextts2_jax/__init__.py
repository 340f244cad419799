"""IndexTTS2 in JAX/Flax: models, conversion of official weights, training and inference.

Layout (see README "Design"):
  models/   one file per component (Config, Linen modules, ``from_torch``)
  nn/       shared layers
  audio.py  audio loading and feature front-ends
  text/     normalization, BPE, segmentation
  convert/  reading official checkpoints, strict state-dict mapping
  train/    the trainer and per-stage tasks
  infer/    synthesis pipeline and decoding loops
"""

__version__ = "0.1.0"


def _xla_flags_for(jaxlib_version: str, flags: str) -> str:
    """``XLA_FLAGS`` with the workarounds this jaxlib needs (returned unchanged where none apply).

    jaxlib 0.11.x (the CUDA image's line) deadlocks XLA:CPU programs that run FFTs (our STFTs: the mel front
    end, the vocoder's losses and discriminators): an FFT thunk continued on an intra-op pool thread splits
    its work over that same pool and waits on a latch, and once every pool thread waits so, nothing runs
    (gdb: all threads in ``ducc0 ... latch::wait`` under ``FftThunk::Execute``). Seen with 0.11.2 on 2 cores:
    the vocoder's GAN gradient on one device, its train step on 8 simulated devices, the demo recipe's
    steps; 0.10.2 and 0.12.1 run them. Two flags together avoid it (each alone did not): the memory-
    optimized HLO scheduler (no two FFTs at once on a device) and single-threaded Eigen (FFTs and
    contractions run on the calling thread; this costs CPU throughput on jaxlib 0.11: use 0.10 or 0.12+ on
    CPU). A flag the user set either way is left alone. The GPU backend ignores xla_cpu_ flags.
    """
    if not jaxlib_version.startswith("0.11."):
        return flags
    for name in ("--xla_cpu_enable_concurrency_optimized_scheduler", "--xla_cpu_multi_thread_eigen"):
        if name not in flags:
            flags = f"{flags} {name}=false".strip()
    return flags


def _apply_xla_workarounds() -> None:
    import os
    from importlib import metadata

    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    new = _xla_flags_for(version, flags)
    if new != flags:  # read when the CPU backend starts, i.e. at the first computation (not at `import jax`)
        os.environ["XLA_FLAGS"] = new
        try:
            from jax._src import xla_bridge

            started = xla_bridge.backends_are_initialized()
        except Exception:  # a private API: no warning where it moved
            started = False
        if started:
            import warnings

            warnings.warn(f"jaxlib {version}: JAX's backends started before indextts2_jax was imported, so XLA:CPU "
                          f"may wedge; import indextts2_jax first or set XLA_FLAGS='{new}'", RuntimeWarning,
                          stacklevel=3)


_apply_xla_workarounds()
