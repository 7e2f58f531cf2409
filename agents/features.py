"""A frozen backbone's final feature maps, computed once per image instead of once per game.

With a frozen backbone (the paper's VGG16) a candidate's features never change, yet a
run encodes every image again in every epoch. :class:`FeatureCache` keeps them by
dataset index, on the model's device, when the whole split's maps fit in ``max_bytes``
(else it says so once and computes them every step, as without a cache). Memory is
taken at the first call, so a cache that a run never asks (its game fuses the passes
instead, see :class:`agents.trainer.GameLoss`) costs nothing. New images are encoded in
chunks of exactly ``chunk`` (padded), so an image's features do not depend on which
others were new with it (CPU convolutions can differ in the last bit between batch
sizes): a resumed run, whose cache starts empty, computes what an uninterrupted one did.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from agents.backbones import Backbone


class FeatureCache:
    """``cache(ids [N], images [N, 3, H, W]) -> maps [N, C, h, w]`` of a frozen backbone."""

    def __init__(
        self,
        backbone: Backbone,
        n_images: int,
        image_size: tuple[int, int],
        max_bytes: int,
        chunk: int = 25,
    ) -> None:
        if any(p.requires_grad for p in backbone.parameters()):
            raise ValueError(
                "a feature cache needs a frozen backbone (its features must not change)"
            )
        self.backbone, self.n_images, self.chunk = backbone, n_images, chunk
        self.shape = backbone.output_shape(tuple(image_size))
        self.bytes = n_images * math.prod(self.shape) * 4
        self.max_bytes = max_bytes
        self.maps: Tensor | None = None  # [n_images, C, h, w], from the first call
        self.known: Tensor | None = None  # [n_images] bool

    @property
    def enabled(self) -> bool:
        """Whether the features of all ``n_images`` fit in ``max_bytes``."""
        return self.bytes <= self.max_bytes

    @torch.no_grad()
    def __call__(self, ids: Tensor, images: Tensor) -> Tensor:
        if not self.enabled:
            return self.backbone(images)
        if self.maps is None:
            self.maps = images.new_empty(self.n_images, *self.shape, dtype=torch.float32)
            self.known = torch.zeros(self.n_images, dtype=torch.bool, device=images.device)
        ids = ids.to(images.device)
        new = torch.unique(ids[~self.known[ids]])
        if len(new):
            # One image per new id (the first row that shows it), in chunks of `chunk`.
            rows = {int(i): row for row, i in reversed(list(enumerate(ids.tolist())))}
            rows = torch.tensor([rows[int(i)] for i in new], device=images.device)
            for start in range(0, len(new), self.chunk):
                part = rows[start : start + self.chunk]
                padded = images.new_zeros(self.chunk, *images.shape[1:])
                padded[: len(part)] = images[part]
                maps = self.backbone(padded)[: len(part)]  # bfloat16 under CPU autocast
                self.maps[new[start : start + self.chunk]] = maps.float()
            self.known[new] = True
        return self.maps[ids]

    def describe(self) -> str:
        """One line for the log: on (and its size) or off (and why)."""
        mib = self.bytes / 2**20
        if self.enabled:
            return f"feature cache: {self.n_images} images' backbone features, {mib:.0f} MiB"
        return (
            f"feature cache off: {self.n_images} images' features need {mib:.0f} MiB, more "
            f"than --feature-cache-mb {self.max_bytes / 2**20:.0f}; computed every step"
        )
