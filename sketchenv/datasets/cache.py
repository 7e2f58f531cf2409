"""Any dataset's images as 8-bit tensors, kept in memory when they fit.

The game core and the pretraining loop both read images by index, many at a time, over
and over. :class:`ImageCache` reads each image once (in one call when the dataset has
``images(indices)``), quantises it to 8 bits (the env's observation format) and keeps it
when the whole dataset takes at most ``cache_bytes``; quantisation happens with or
without the cache, so results never depend on memory settings.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor


class ImageCache:
    """uint8 images and int labels of a dataset of ``(image [3, H, W], label)`` items."""

    def __init__(self, dataset, cache_bytes: int = 2**31) -> None:
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.dataset = dataset
        side = getattr(dataset, "image_size", None)
        if isinstance(side, int):
            check_memory(side, 1)
        first = to_uint8(dataset[0][0], 0)
        self.image_size: tuple[int, int] = (first.shape[1], first.shape[2])
        self.enabled = len(dataset) * first.numel() <= cache_bytes
        self._reset()
        self.labels = self._read_labels()

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, ids: Tensor, out: Tensor | None = None) -> Tensor:
        """uint8 images ``[*ids.shape, 3, H, W]``, read through the cache when it is enabled;
        into ``out`` (of that shape) when given, which saves allocating the result."""
        flat = ids.flatten()
        shape = (*ids.shape, 3, *self.image_size)
        if out is not None and (tuple(out.shape) != shape or out.dtype != torch.uint8):
            raise ValueError(f"out must be a uint8 tensor {list(shape)}, got {describe(out)}")
        if not self.enabled:
            images = self._load(flat).view(shape)
            return images if out is None else out.copy_(images)
        missing = flat[~self._cached[flat]].unique()
        if len(missing):
            self._cache[missing] = self._load(missing)
            self._cached[missing] = True
        if out is None:
            return self._cache[flat].view(shape)
        torch.index_select(self._cache, 0, flat, out=out.view(len(flat), 3, *self.image_size))
        return out

    def preload(self, chunk: int = 1024) -> bool:
        """Read every image into memory now; False (and nothing read) when over the budget."""
        if self.enabled:
            for start in range(0, len(self), chunk):
                self.images(torch.arange(start, min(start + chunk, len(self))))
        return self.enabled

    def _load(self, ids: Tensor) -> Tensor:
        """uint8 images of items ``ids``, in one call when the dataset has ``images(indices)``."""
        read_many = getattr(self.dataset, "images", None)
        if not callable(read_many):
            return torch.stack([self._load_item(int(i))[0] for i in ids])
        images = read_many(ids)
        expected = (len(ids), 3, *self.image_size)
        if not isinstance(images, Tensor) or tuple(images.shape) != expected:
            raise ValueError(
                f"dataset.images(indices) must return a tensor of shape {list(expected)}, "
                f"got {describe(images)}"
            )
        return quantise(images, "dataset.images(...)")

    def _load_item(self, index: int) -> tuple[Tensor, int]:
        image, label = self.dataset[index]
        image = to_uint8(image, index)
        if tuple(image.shape[1:]) != self.image_size:
            raise ValueError(
                f"all dataset images must have one size; item 0 is {self.image_size}, item {index} "
                f"is {tuple(image.shape[1:])}: resize them in the dataset (e.g. image_size=...)"
            )
        return image, int(label)

    def _read_labels(self) -> Tensor:
        labels = getattr(self.dataset, "labels", None)
        if labels is None:
            labels = getattr(self.dataset, "targets", None)
        if labels is None:  # read every item once, keeping the images when they are cached
            items = [self._load_item(i) for i in range(len(self.dataset))]
            if self.enabled:
                self._cache[:] = torch.stack([image for image, _ in items])
                self._cached[:] = True
            labels = [label for _, label in items]
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
        if len(labels) != len(self.dataset):
            raise ValueError(
                f"dataset.labels has {len(labels)} entries for {len(self.dataset)} items"
            )
        return labels

    def _reset(self) -> None:
        n_items = len(self.dataset) if self.enabled else 0
        self._cache = torch.empty((n_items, 3, *self.image_size), dtype=torch.uint8)
        self._cached = torch.zeros(n_items, dtype=torch.bool)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_cache"], state["_cached"]  # cheap to refill, possibly gigabytes to pickle
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()


def to_uint8(image, index: int) -> Tensor:
    """A dataset image (float tensor in [0, 1], uint8 tensor or PIL image) as uint8 [3, H, W]."""
    if not isinstance(image, Tensor):
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(
                f"dataset item {index}: the image must be a tensor [3, H, W] or a PIL image, "
                f"got {type(image).__name__} (add transforms.ToTensor() to the dataset)"
            )
        image = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"dataset item {index}: the image must be [3, H, W] (or [1, H, W] / [H, W] grey), "
            f"got shape {list(image.shape)}"
        )
    return quantise(image.expand(3, -1, -1), f"dataset item {index}")


def quantise(images: Tensor, where: str) -> Tensor:
    """Float images in [0, 1] (or uint8) -> uint8, rounding to the nearest of 256 levels."""
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise TypeError(f"{where}: images must be float in [0, 1] or uint8, got {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3 or math.isnan(low + high):
        raise ValueError(
            f"{where}: float images must lie in [0, 1], found [{low:.3g}, {high:.3g}]; "
            "remove any Normalize transform (backbones normalise themselves)"
        )
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def describe(value) -> str:
    """A short description of a value for error messages (shape and dtype of tensors)."""
    if isinstance(value, Tensor):
        return f"tensor of shape {list(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def check_memory(image_size: int, n_images: int) -> None:
    """Refuse work on ``n_images`` float images of ``image_size`` at once (and as much again
    for the work on them) that would not fit in the memory this machine has free, before
    any is made, instead of failing inside the allocator."""
    needed = 2 * n_images * 3 * image_size**2 * 4
    available = _available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"image_size {image_size} needs about {needed / 2**30:.1f} GiB for {n_images} "
            f"images at once, more than the {available / 2**30:.1f} GiB free here: use a "
            "smaller image_size"
        )


def _available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux's MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
