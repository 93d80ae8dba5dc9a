"""Top-1 accuracy over a whole split, in eval mode, with the images already on the device."""

from __future__ import annotations

import contextlib

import torch

from zskt.data import ImageSplit, normalize


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, split: ImageSplit, mean, std, *, batch_size: int = 500,
                      precision=None) -> float:
    """Percent correct on `split` with the model in eval mode (its BN running statistics), as `test()` does
    in the authors' solver (SPEC §3); the model's previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    try:
        with autocast:
            for start in range(0, len(split.labels), batch_size):
                images = normalize(split.images[start:start + batch_size].to(device), mean, std)
                if precision is not None:
                    images = precision.layout(images)
                logits, _ = model(images)
                correct += (logits.argmax(1) == split.labels[start:start + batch_size].to(device)).sum()
    finally:
        model.train(was_training)
    return 100.0 * correct.item() / max(1, len(split.labels))
