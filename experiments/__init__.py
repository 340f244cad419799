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
