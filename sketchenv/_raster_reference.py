"""Naive dense reference rasteriser: the executable definition of the maths.

Every (sketch, stroke, chord, pixel) intermediate is materialised and autograd differentiates
through all of them. Slow and memory-hungry on purpose; the tests and
`benchmarks/raster.py` compare `sketchenv.raster.render_strokes` against it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sketchenv.strokes import StrokeFormat, polyline

MAX_TEMPERATURE = 0.05  # temperature of the "max" (softmax-weighted smooth-max) composite


def naive_render_strokes(
    strokes: Tensor,
    image_size: tuple[int, int],
    *,
    sigma2: float = 5e-4,
    kernel: str = "exp",
    composite: str = "softor",
    invert: bool = True,
    stroke_format: StrokeFormat | str = "line",
    curve_tolerance: float = 0.1,
) -> Tensor:
    """Render `[..., n, size]` strokes to `[..., H, W]` (`[..., 3, H, W]` with colour), densely."""
    stroke_format = StrokeFormat.parse(stroke_format)
    height, width = image_size
    style = stroke_format.style(strokes)
    points = polyline(
        stroke_format.points(strokes), curve_tolerance * math.sqrt(sigma2) * style[..., 0].detach()
    )
    a, b = points[..., :-1, :], points[..., 1:, :]  # chords [..., n, K, 2]
    x0, y0, x1, y1 = (c[..., None, None] for c in (a[..., 0], a[..., 1], b[..., 0], b[..., 1]))
    px = torch.linspace(-1, 1, width, dtype=strokes.dtype, device=strokes.device)
    py = torch.linspace(-1, 1, height, dtype=strokes.dtype, device=strokes.device)[:, None]
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    ux, uy = px - x0, py - y0  # [..., n, K, 1, W] and [..., n, K, H, 1]
    nonzero = length2 > 0
    # A zero-length chord is a dot; t = 1/2 shares its gradient equally between the ends.
    t = torch.where(
        nonzero,
        ((ux * dx + uy * dy) / torch.where(nonzero, length2, 1.0)).clamp(0, 1),
        torch.full_like(length2, 0.5),
    )
    d2 = ((ux - t * dx) ** 2 + (uy - t * dy) ** 2).amin(dim=-3)  # closest chord: [..., n, H, W]
    z = d2 / (sigma2 * style[..., 0, None, None] ** 2)
    r = style[..., 1, None, None] * (torch.exp(-z) if kernel == "exp" else 2 * torch.sigmoid(-z))
    if stroke_format.colour:  # RGB over, in stroke order, onto white (or black)
        if composite == "max":
            raise ValueError("coloured strokes are composited with 'over'")
        canvas = r.new_full((*r.shape[:-3], 3, *r.shape[-2:]), float(invert))
        for i in range(r.shape[-3]):
            alpha = r[..., i, None, :, :]
            canvas = (1 - alpha) * canvas + alpha * style[..., i, 2:, None, None]
        return canvas
    if composite == "softor":
        ink = 1 - torch.prod(1 - r, dim=-3)
    elif composite == "over":  # painter's alpha-over in stroke order, ink colour 1, alpha r
        ink = torch.zeros_like(r[..., 0, :, :])
        for i in range(r.shape[-3]):
            ink = r[..., i, :, :] + (1 - r[..., i, :, :]) * ink
    elif composite == "max":
        weights = torch.softmax(r / MAX_TEMPERATURE, dim=-3)
        ink = (weights * r).sum(dim=-3)
    else:
        raise ValueError(f"unknown composite {composite!r}")
    return 1 - ink if invert else ink
