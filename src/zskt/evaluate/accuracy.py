"""Predictions and top-1 accuracy over a whole split, in eval mode, batch by batch on the model's device."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from zskt.data import ImageSplit, normalize
from zskt.distributed import all_sum, shard


@torch.no_grad()
def predict(
    model: nn.Module,
    split: ImageSplit,
    mean,
    std,
    *,
    batch_size: int = 500,
    precision=None,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """argmax of `model` on the images `rows` = [first, last) of `split` (default: all), int64 on the model's
    device, in eval mode (BN running statistics, as `test()` in the authors' solver, SPEC §3); the model's
    previous train/eval mode is restored. `precision` (a runtime.Precision) sets autocast and layout."""
    first, last = rows if rows is not None else (0, len(split.labels))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    out = []
    try:
        with autocast:
            for start in range(first, last, batch_size):
                images = normalize(split.images[start : min(start + batch_size, last)].to(device), mean, std)
                logits, _ = model(precision.layout(images) if precision is not None else images)
                out.append(logits.argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=device)


def evaluate_accuracy(
    model: nn.Module, split: ImageSplit, mean, std, *, batch_size: int = 500, precision=None
) -> float:
    """Percent correct on `split` (`predict`). Under torchrun each rank predicts its contiguous part of the
    split and the counts are summed: every rank gets the same accuracy for a fraction of the work (all ranks
    must call this together). No host sync until the end."""
    first, last = shard(len(split.labels))
    predicted = predict(
        model, split, mean, std, batch_size=batch_size, precision=precision, rows=(first, last)
    )
    correct = (predicted == split.labels[first:last].to(predicted.device)).sum()
    return 100.0 * all_sum(correct).item() / max(1, len(split.labels))
