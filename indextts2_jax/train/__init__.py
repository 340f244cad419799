"""Training: the generic trainer (trainer.py), optimizer (optim.py) and per-stage tasks."""
