"""How a network is scored: predictions and test accuracy here, belief matching (transition curves, MTE) in
`belief`."""

from zskt.evaluate.accuracy import evaluate_accuracy, predict

__all__ = ["evaluate_accuracy", "predict"]
