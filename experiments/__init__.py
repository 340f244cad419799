"""Launchers: ``python -m experiments.<name> --config ... --workdir ...``."""
