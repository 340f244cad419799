"""Data preparation: the deterministic espeak-ng demo corpus (demo_corpus) and its espeak-ng binding (espeak)."""
