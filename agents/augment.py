"""Random image augmentations for pretraining, drawn per image on whole batches.

Every transform takes a float batch ``[N, 3, H, W]`` in ``[0, 1]`` and a
``torch.Generator`` and draws its own parameters for each image, so two calls give two
independent *views* (what Barlow Twins and SimCLR compare) and one seed repeats them.
Geometry (crop, flip, rotation) is one affine resampling per image; colour (brightness,
contrast, saturation, hue) is arithmetic on the batch. Nothing leaves the device.

``AUGMENTATIONS`` holds the recipe of each pretraining method (see :class:`Augment`):
the self-supervised methods need strong views (the representation learns what the views
share: object identity, not colour or framing); supervised training needs only mild
ones, enough to avoid memorising the training images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.edges import line_drawing

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Augment:
    """A recipe of random transforms, applied in this order to every image:

    * a random crop covering ``crop_scale`` of the image area, with an aspect ratio in
      ``crop_ratio`` (log-uniform), resized back to the input size;
    * ``flip``: a horizontal flip with probability 1/2 when true;
    * ``rotation``: a rotation by up to ``±rotation`` degrees (borders reflected);
    * colour jitter with probability ``jitter_p``: brightness, contrast and saturation
      factors in ``[1 - s, 1 + s]`` and a hue rotation of up to ``±hue`` turns (in YIQ
      space);
    * greyscale with probability ``grey_p``;
    * with probability ``drawing_p``, the image replaced by a line drawing of it: its
      oriented-edge energy (:func:`agents.edges.edges`, one-pixel scale) as dark ink on
      white, so the network learns that an outline shows the same object as the photo.
    """

    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    rotation: float = 15.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grey_p: float = 0.2
    drawing_p: float = 0.0

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"augment expects images [N, 3, H, W], got {list(images.shape)}")
        images = self.geometry(images, generator)
        images = self.colour(images, generator)
        if self.drawing_p > 0:
            to_draw = (uniform(len(images), 1, generator) < self.drawing_p).to(images.device)
            images = torch.where(to_draw.view(-1, 1, 1, 1), line_drawing(images), images)
        return images.clamp_(0.0, 1.0)

    def geometry(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Crop, flip and rotate each image with one bilinear resampling."""
        n = images.shape[0]
        u = uniform(n, 6, generator).to(images.device)
        low, high = self.crop_scale
        area = low + (high - low) * u[:, 0]
        log_low, log_high = (math.log(r) for r in self.crop_ratio)
        ratio = torch.exp(log_low + (log_high - log_low) * u[:, 1])
        half_w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop half-size, canvas units
        half_h = torch.sqrt(area / ratio).clamp(max=1.0)
        centre_x = (1 - half_w) * (2 * u[:, 2] - 1)
        centre_y = (1 - half_h) * (2 * u[:, 3] - 1)
        flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        angle = math.radians(self.rotation) * (2 * u[:, 5] - 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output canvas coordinates -> input coordinates: scale, flip, then rotate.
        theta = torch.stack(
            [
                torch.stack([cos * half_w * flip, -sin * half_h, centre_x], -1),
                torch.stack([sin * half_w * flip, cos * half_h, centre_y], -1),
            ],
            1,
        ).to(images)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    def colour(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Colour jitter (with probability ``jitter_p``), then greyscale (``grey_p``)."""
        n = images.shape[0]
        u = uniform(n, 6, generator).to(images)
        shape = (n, 1, 1, 1)
        jitter = (u[:, 0] < self.jitter_p).view(shape)

        def factor(column: int, strength: float) -> Tensor:
            f = 1 + strength * (2 * u[:, column] - 1)
            return torch.where(jitter, f.view(shape), torch.ones_like(f).view(shape))

        out = images * factor(1, self.brightness)
        mean = grey(out).mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * factor(2, self.contrast) + mean
        out = out.clamp(0, 1)
        out = grey(out) + (out - grey(out)) * factor(3, self.saturation)
        turns = self.hue * (2 * u[:, 4] - 1) * jitter.flatten()
        out = rotate_hue(out.clamp(0, 1), turns)
        to_grey = (u[:, 5] < self.grey_p).view(shape)
        return torch.where(to_grey, grey(out).expand_as(out), out)


def uniform(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    """``[n, k]`` uniforms on the CPU (so a CPU generator drives GPU batches too)."""
    return torch.rand(n, k, generator=generator)


def grey(images: Tensor) -> Tensor:
    """Luma ``[N, 1, H, W]`` of RGB images."""
    r, g, b = images.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def rotate_hue(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate each image's chroma by ``turns[i]`` full turns, keeping luma (YIQ space)."""
    to_yiq = images.new_tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
    )
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, images)
    angle = 2 * math.pi * turns.to(images).view(-1, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq)


# Per method. Self-supervised views follow SimCLR/Barlow Twins (crops, flips, strong
# colour jitter, greyscale; no blur at these sizes) with small rotations added, since
# sketches and objects appear at any orientation. Supervised: milder crops and colour.
AUGMENTATIONS = {
    "barlow": Augment(),
    "simclr": Augment(),
    "supervised": Augment(crop_scale=(0.5, 1.0), jitter_p=0.5, grey_p=0.2),
}
