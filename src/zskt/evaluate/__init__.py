"""How a network is scored: test accuracy here, belief matching (transition curves, MTE) in `belief`."""

from zskt.evaluate.accuracy import evaluate_accuracy

__all__ = ["evaluate_accuracy"]
