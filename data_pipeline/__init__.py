"""Data preparation: corpus importers, manifests, the espeak-ng demo corpus, preprocessing and shards."""
