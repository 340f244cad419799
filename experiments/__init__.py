"""Launchers: ``python -m experiments.<name> --config ... --workdir ...``."""

import sys


def run_cli(main, argv=None) -> None:
    """A console-script entry point around ``main(argv)``: an error about the input (an ``IndexTTS2Error``)
    ends the program with its message and exit status 2, not a traceback."""
    from indextts2_jax.errors import IndexTTS2Error

    try:
        main(argv)
    except IndexTTS2Error as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def random_model_assets(spec: str):
    """``--model random:tiny`` / ``random:official``: random-weight ``ModelAssets`` at those sizes (smoke tests,
    timing); None for any other ``--model`` (a path). A wrong size ends the program with a message."""
    if not spec.startswith("random:"):
        return None
    from indextts2_jax.infer import random_assets as ra

    size = spec.split(":", 1)[1]
    if size not in ("tiny", "official"):
        raise SystemExit(f"--model {spec}: expected random:tiny or random:official")
    return ra.random_assets(ra.tiny_config() if size == "tiny" else ra.official_config(), 0)
