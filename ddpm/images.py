"""PNG output: [-1, 1] tensors to uint8, sample grids (ED | ES per sample) with optional mask overlays."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data.atomic import atomic_write_bytes

# Overlay colours for LV, MYO, RV (internal labels 1, 2, 3).
LABEL_COLOURS = np.array([[0, 0, 0], [220, 50, 50], [50, 200, 80], [60, 120, 230]], dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8 [0, 255]."""
    return np.clip((np.asarray(image, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """image: (H, W) in [-1, 1]; mask: (H, W) labels -> (H, W, 3) uint8 with coloured structures."""
    grey = np.repeat(to_uint8(image)[..., None], 3, axis=2).astype(np.float32)
    colours = LABEL_COLOURS[np.clip(mask, 0, 3)]
    inside = (mask > 0)[..., None]
    return np.where(inside, (1 - alpha) * grey + alpha * colours, grey).astype(np.uint8)


def sample_tile(image: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """image: (2, H, W) ED/ES; mask: (2, H, W) or None -> (H, W*k, 3): [mask overlay ED, ES |] ED | ES."""
    parts = []
    if mask is not None:
        parts += [overlay(np.zeros_like(image[f]) - 1, mask[f], alpha=1.0) for f in range(image.shape[0])]
    parts += [np.repeat(to_uint8(image[f])[..., None], 3, axis=2) for f in range(image.shape[0])]
    return np.concatenate(parts, axis=1)


def save_grid(path: str | Path, images: np.ndarray, masks: Optional[np.ndarray] = None,
              labels: Optional[Sequence[str]] = None, ncols: int = 4, pad: int = 2) -> Path:
    """images: (N, 2, H, W) in [-1, 1]; masks: (N, 2, H, W) or None. One tile per sample, captions below."""
    tiles = [sample_tile(images[i], None if masks is None else masks[i]) for i in range(len(images))]
    th, tw = tiles[0].shape[:2]
    caption = 12 if labels else 0
    ncols = max(1, min(ncols, len(tiles)))
    nrows = (len(tiles) + ncols - 1) // ncols
    canvas = Image.new("RGB", (ncols * (tw + pad) + pad, nrows * (th + caption + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        x = pad + (i % ncols) * (tw + pad)
        y = pad + (i // ncols) * (th + caption + pad)
        canvas.paste(Image.fromarray(tile), (x, y))
        if labels:
            draw.text((x, y + th), str(labels[i])[: tw // 6], fill=(0, 0, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
