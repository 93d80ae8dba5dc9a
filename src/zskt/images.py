"""Image grids as PNG files: what a generator or an inversion method made, un-normalised for a person to look
at (run folders' pseudo/*.png)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from zskt.io import atomic_write_bytes


def save_image_grid(images: torch.Tensor, mean, std, path: Path, n: int = 64):
    """A PNG of up to n images (pseudo or synthesized), un-normalised with the data set's mean/std and clipped
    to [0, 1]."""
    import matplotlib.image

    x = images[:n].detach().float().cpu()
    c = x.shape[1]
    x = (x * torch.tensor(std).view(1, c, 1, 1) + torch.tensor(mean).view(1, c, 1, 1)).clamp(0, 1)
    scale = max(1, 32 // x.shape[-1])  # small images (digits) are enlarged by pixel repetition to be visible
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cols = math.ceil(math.sqrt(len(x)))
    rows = math.ceil(len(x) / cols)
    h, w = x.shape[-2:]
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)  # 1-pixel white lines between images
    for i, image in enumerate(x):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = image
    array = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, array, cmap="gray" if c == 1 else None, vmin=0, vmax=1, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    # The grid itself (H×W grey or H×W×C, in [0, 1]), e.g. for `log.image("pseudo", grid, step)`.
    return array
