"""Top-1 accuracy over a whole split, in eval mode, with the images already on the device."""

from __future__ import annotations

import contextlib

import torch

from zskt.data import ImageSplit, normalize
from zskt.distributed import all_sum, shard


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
    # Under torchrun each rank counts its contiguous part of the split and the counts are summed: every rank
    # gets the same accuracy for a fraction of the work (all ranks must call this together).
    first, last = shard(len(split.labels))
    try:
        with autocast:
            for start in range(first, last, batch_size):
                stop = min(start + batch_size, last)
                images = normalize(split.images[start:stop].to(device), mean, std)
                if precision is not None:
                    images = precision.layout(images)
                logits, _ = model(images)
                correct += (logits.argmax(1) == split.labels[start:stop].to(device)).sum()
    finally:
        model.train(was_training)
    return 100.0 * all_sum(correct).item() / max(1, len(split.labels))
