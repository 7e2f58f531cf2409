"""Fixed perceptual networks that need no weights, and line drawings of images.

``edges`` (:class:`EdgeNet`): oriented edges at several scales. The image is taken at ``n_scales`` levels of a pyramid (full size, then halved each
time by 2x2 averaging). At each level its gradient is taken in each colour channel after
a one-pixel Gaussian blur, and the structure tensor (summed over channels, smoothed by
the same blur) gives three maps per pixel: the doubled-angle orientation ``(Jxx - Jyy, 2 Jxy)`` scaled by edge energy, and the
energy ``Jxx + Jyy``, divided by the image's strongest energy at that scale, plus one
constant map. Unit-normalised over these four channels (as the perceptual loss does), a
pixel reads "edge of this orientation" or "flat": independent of colour, contrast and of
which side of an edge is darker, so a black line on white can match the outline of an
orange disc on a striped background. It cannot tell an outline from a filled silhouette
(both have their edges in the same place).

``drawing`` (:class:`DrawingNet`): the sketch's ink against the image's line drawing
(:func:`line_drawing`: its edges as dark lines on white), at several scales. A sketch
matches where it puts ink on the image's outlines and leaves the rest white, so outlines
win over filled silhouettes and scribbles.

Both follow the :class:`~agents.backbones.Backbone` tap interface
(``forward(images, taps=names)``). A perceptual network may also define
``reference(images)``, what a sketch of ``images`` should look like to it, and
``distance(target, drawn, weights)``; :func:`agents.losses.perceptual_loss` uses them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EdgeNet(nn.Module):
    """Multi-scale oriented-edge maps with the :class:`~agents.backbones.Backbone` tap
    interface (``forward(images, taps=names)``); it has no parameters."""

    name = "edges"

    def __init__(self, n_scales: int = 4, flat: float = 0.1) -> None:
        super().__init__()
        self.tap_index = {f"scale{k}": k for k in range(n_scales)}
        self.flat = flat  # energy (relative to the image's strongest) that counts as an edge

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self.tap_index)

    def forward(self, images: Tensor, taps: Sequence[str] | None = None) -> list[Tensor]:
        taps = list(taps or self.tap_names)
        unknown = [t for t in taps if t not in self.tap_index]
        if unknown:
            raise ValueError(f"unknown taps {unknown} for edges; known: {list(self.tap_index)}")
        levels = [images]
        for _ in range(max(self.tap_index[t] for t in taps)):
            levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
        return [edges(levels[self.tap_index[t]], self.flat) for t in taps]


class DrawingNet(nn.Module):
    """Ink maps ``[N, 1, H, W]`` (1 - mean of the channels) of a pyramid of ``n_scales``
    levels (2x2 averaging), level ``k`` scaled by ``2^k``; the reference of an image is its
    line drawing, and the distance the mean squared difference per level. With the
    scaling, each level's mean counts its squared errors in full-size pixels, so coarse
    levels (which pull strokes from afar) weigh as much as the fine one."""

    name = "drawing"

    def __init__(self, n_scales: int = 4) -> None:
        super().__init__()
        self.tap_index = {f"scale{k}": k for k in range(n_scales)}
        # Finer levels weigh more: they tell a star's outline from a ring's (chosen by
        # side-by-side runs, see the README).
        self.default_weights = [max(1.0, 2.0 ** (n_scales - 2 - k)) for k in range(n_scales)]

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self.tap_index)

    def reference(self, images: Tensor) -> Tensor:
        return line_drawing(images)

    def forward(self, images: Tensor, taps: Sequence[str] | None = None) -> list[Tensor]:
        taps = list(taps or self.tap_names)
        unknown = [t for t in taps if t not in self.tap_index]
        if unknown:
            raise ValueError(f"unknown taps {unknown} for drawing; known: {list(self.tap_index)}")
        levels = [1 - images.mean(1, keepdim=True)]
        for _ in range(max(self.tap_index[t] for t in taps)):
            levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
        return [levels[self.tap_index[t]] * 2 ** self.tap_index[t] for t in taps]

    def distance(
        self, target: Sequence[Tensor], drawn: Sequence[Tensor], weights: Sequence[float]
    ) -> Tensor:
        """Per-image distance ``[N]``: the weighted sum over levels of the mean squared
        difference of the (scaled) ink maps."""
        total = target[0].new_zeros(target[0].shape[0])
        for a, b, w in zip(target, drawn, weights, strict=True):
            total = total + w * (a - b).pow(2).mean(dim=(1, 2, 3))
        return total


def line_drawing(images: Tensor, gain: float = 3.0) -> Tensor:
    """Dark lines on white where ``images`` have edges (energy over 1/gain of the
    image's strongest edge is black), as RGB; edges are found at the scale of one pixel
    at 64 px (proportionally finer below, so small images keep thin lines)."""
    sigma = min(1.0, images.shape[-1] / 64)
    energy = edges(images, flat=0.0, sigma=sigma)[:, 2:3]  # energy, in [0, 1] of the peak
    return (1 - (gain * energy).clamp(0, 1)).expand(-1, 3, -1, -1)


def edges(images: Tensor, flat: float, sigma: float = 1.0) -> Tensor:
    """``[N, 4, H, W]`` oriented-edge maps of ``[N, 3, H, W]`` images (see the module)."""
    blurred = blur(images, sigma)
    gx = blurred[..., :, 2:] - blurred[..., :, :-2]
    gy = blurred[..., 2:, :] - blurred[..., :-2, :]
    gx, gy = F.pad(gx, (1, 1, 0, 0)), F.pad(gy, (0, 0, 1, 1))
    jxx, jyy, jxy = (blur(t.sum(1, keepdim=True), sigma) for t in (gx * gx, gy * gy, gx * gy))
    energy = jxx + jyy
    peak = energy.detach().amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    maps = torch.cat([jxx - jyy, 2 * jxy, energy], 1) / peak
    return torch.cat([maps, torch.full_like(energy, flat)], 1)


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian reaching 3 sigma."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of every channel, borders replicated."""
    kernel = gaussian_kernel(sigma).to(images)
    channels, radius = images.shape[1], len(kernel) // 2
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
