"""Train one IndexTTS-2 stage from a config.

    python -m experiments.train --config configs/demo.py:stage=gpt --workdir runs/demo/gpt

The config is locked after parsing: an override of a key that does not exist
(``--config.typo=1``) fails loudly, as does an unknown ``key=value`` in the config argument.

Status: the trainer (issue 8) has not landed yet. Until it does, this launcher validates and
resolves the config, writes it to ``<workdir>/config.json`` and exits 0 without training.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:stage=gpt.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required (e.g. --config configs/demo.py:stage=gpt)")
    workdir = _WORKDIR.value
    if not workdir:
        raise app.UsageError("--workdir is required")
    os.makedirs(workdir, exist_ok=True)
    resolved = config.to_dict()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(resolved, f, indent=2, sort_keys=True, default=str)
    print(config)
    print(f"resolved config written to {os.path.join(workdir, 'config.json')}")
    print(f"stage {config.stage!r}: the trainer has not landed yet (issue 8); nothing was trained.")
    return 0


def parse_flags_or_exit(argv: list[str]) -> None:
    """Parse flags up front so a bad ``--config.<key>`` override gets a one-line error, not a traceback."""
    try:
        flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        sys.exit(f"error: config override names a key that does not exist ({e}); overrides given: {overrides}")
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except Exception as e:  # ConfigError from get_config(arg), syntax errors in a config file
        sys.exit(f"error: cannot load config: {type(e).__name__}: {e}")


def run() -> None:
    """Console-script entry point."""
    parse_flags_or_exit(sys.argv)
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
