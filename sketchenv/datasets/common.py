"""What the dataset modules share: split checks, seeded stratified splits, clear
missing-file errors, and a small base class turning stored pixels into game images.

Every dataset here returns items `(image, label)` with `image` a float tensor
`[3, S, S]` in `[0, 1]`: grey images are repeated to three channels, non-square images
lose their borders to a maximal centred square crop, and the square is resized to `S`
(bilinear, antialiased) when its side differs from `S`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message names the path, the files and the fix."""


def not_found(
    name: str, path: str | os.PathLike, files: Sequence[str], how: str
) -> DatasetNotFoundError:
    """Build the error for a dataset whose `files` are missing from `path`."""
    listed = ", ".join(files)
    return DatasetNotFoundError(
        f"{name} not found: expected {listed} in {os.path.abspath(path)}. {how}"
    )


def download_hint(url: str) -> str:
    """The usual advice for a dataset that torchvision (or we) can fetch from `url`."""
    return (
        "Pass download=True (`--download` on the command line) to fetch it from "
        f"{url}, or put the files there by hand (`--data-root` / root= picks the folder)."
    )


def fetch(download: Callable[[], None], name: str, source: str) -> None:
    """Run `download`; turn network and archive failures into a DatasetNotFoundError."""
    try:
        download()
    except (OSError, RuntimeError) as err:
        raise DatasetNotFoundError(
            f"{name}: downloading from {source} failed ({type(err).__name__}: {err}). "
            "Check the network, or download the files by hand and pass root= "
            "(`--data-root`) pointing at them."
        ) from err


def check_split(split: str, name: str, unlabelled: Sequence[str] = ()) -> str:
    """Return `split` if it is one of train/val/test; refuse unlabelled splits clearly."""
    if split in unlabelled:
        raise ValueError(
            f"{name}'s {split!r} split has no labels, and the games need labels (OO games "
            f"pick candidates by class, scores compare classes). Use one of {SPLITS}."
        )
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_image_size(image_size: int | None, default: int) -> int:
    """Return `image_size` (a positive int) or `default` when it is None."""
    if image_size is None:
        return default
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise TypeError(f"image_size must be a positive int or None, got {image_size!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size}")
    return int(image_size)


def _by_class(labels: Sequence[int]) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def _shares(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer `total` in proportion to `weights` (largest remainder, exact sum)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def stratified_split(
    labels: Sequence[int], fractions: Sequence[float], seed: int
) -> list[list[int]]:
    """Split item indices into `len(fractions)` disjoint parts, class by class.

    Each class is shuffled by `seed` and cut in the given proportions, so every part
    keeps the class balance of the whole and one seed always gives the same parts.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    weights = np.asarray(fractions, dtype=float)
    for items in _by_class(labels).values():
        items = rng.permutation(items)
        bounds = np.cumsum(_shares(len(items), weights))[:-1]
        for part, chunk in zip(parts, np.split(items, bounds), strict=True):
            part.extend(int(i) for i in chunk)
    return [sorted(part) for part in parts]


def holdout(labels: Sequence[int], n_held: int, seed: int) -> tuple[list[int], list[int]]:
    """Hold `n_held` items out (stratified, seeded); return (kept, held) index lists."""
    if not 0 < n_held < len(labels):
        raise ValueError(f"cannot hold out {n_held} of {len(labels)} items")
    rng = np.random.default_rng(seed)
    groups = list(_by_class(labels).values())
    quotas = _shares(n_held, np.array([len(g) for g in groups], dtype=float))
    held: list[int] = []
    for items, quota in zip(groups, quotas, strict=True):
        held.extend(int(i) for i in rng.permutation(items)[:quota])
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def train_or_val(labels: Sequence[int], split: str, n_val: int, seed: int) -> list[int]:
    """Indices of `split` ("train" or "val") once `n_val` items are held out for val."""
    train, val = holdout(labels, n_val, seed)
    return val if split == "val" else train


def fit_square(
    pixels: Tensor, size: int, *, crop: tuple[int, int, int] | None = None, flip: bool = False
) -> Tensor:
    """uint8 `[C, H, W]` (C = 1 or 3) -> float `[3, size, size]` in [0, 1].

    Crops the square `crop = (top, left, side)` (default: the maximal centred square),
    optionally mirrors it left-right, and resizes it to `size`.
    """
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    height, width = pixels.shape[-2:]
    if crop is None:
        side = min(height, width)
        crop = ((height - side) // 2, (width - side) // 2, side)
    top, left, side = crop
    image = pixels[:, top : top + side, left : left + side].float().div_(255)
    if flip:
        image = image.flip(-1)
    if side != size:
        image = F.interpolate(
            image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0].clamp_(0, 1)
    return image.contiguous()


def read_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file to uint8 `[3, H, W]` RGB (grey, palette, alpha all converted;
    16-bit grey scaled to 8 bits, not clipped); an unreadable file is named in the error."""
    try:
        with Image.open(path) as image:
            if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey PNG
                grey = (np.asarray(image, dtype=np.float64) / 257).clip(0, 255).round()
                rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
            else:
                rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(
            f"cannot read image {os.fspath(path)} ({type(err).__name__}: {err}): the file is "
            "corrupt, truncated or not an image; replace or remove it"
        ) from err
    if min(rgb.shape[:2]) < 2:
        raise ValueError(
            f"image {os.fspath(path)} is {rgb.shape[1]}x{rgb.shape[0]} px, too small to hold "
            "a picture: remove it"
        )
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


class ImageDataset(Dataset):
    """Base of every dataset here: `classes`, cheap `labels`, square `image_size` items.

    Subclasses implement `pixels(index)`, the stored image as uint8 `[C, H, W]`.
    """

    def __init__(self, classes: Sequence[str], labels: Sequence[int], image_size: int):
        self.classes = list(classes)
        self.labels = [int(label) for label in labels]
        self.image_size = image_size
        bad = [label for label in self.labels if not 0 <= label < len(self.classes)]
        if bad:
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes, "
                f"got {bad[0]}: the label files are corrupted or do not match the class list"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: int) -> Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        index = range(len(self))[index]  # bounds check, negative indices
        return fit_square(self.pixels(index), self.image_size), self.labels[index]

    def images(self, indices: Sequence[int] | Tensor) -> Tensor:
        """uint8 `[N, 3, S, S]` of many items at once (SketchGame's batch read path)."""
        images = [self[int(i)][0].mul(255).round_().to(torch.uint8) for i in indices]
        size = self.image_size
        return torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes, "
            f"{self.image_size} px)"
        )


class ArrayImages(ImageDataset):
    """Images held in (or memory-mapped from) one uint8 array `[N, C, H, W]` or `[N, H, W]`.

    `array` is anything indexable by row (numpy array, tensor, memory map); `rows[i]` is
    the row of item `i`, so splits share the array without copying.
    """

    def __init__(
        self,
        array: np.ndarray | Tensor | Sequence,
        rows: Sequence[int],
        labels: Sequence[int],
        classes: Sequence[str],
        image_size: int,
    ):
        super().__init__(classes, labels, image_size)
        if len(rows) != len(self.labels):
            raise ValueError(f"{len(rows)} rows for {len(self.labels)} labels")
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        first = array[0]
        self._grey = first.ndim == 2
        self._stored_size = first.shape[-2:]

    def pixels(self, index: int) -> Tensor:
        return self._read(int(self.rows[index]))

    def images(self, indices: Sequence[int] | Tensor) -> Tensor:
        """uint8 `[N, 3, S, S]`; a single array read when the stored size is `image_size`."""
        if tuple(self._stored_size) != (self.image_size, self.image_size):
            return super().images(indices)
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        return self._read(rows).expand(-1, 3, -1, -1).contiguous()

    def _read(self, rows: int | np.ndarray) -> Tensor:
        """Array row(s) as uint8 `[C, H, W]` (or `[N, C, H, W]`)."""
        if isinstance(self.array, Tensor):
            image = self.array[torch.as_tensor(rows)]
        else:
            image = torch.from_numpy(np.ascontiguousarray(self.array[rows]))
        return image.unsqueeze(-3) if self._grey else image


class FileImages(ImageDataset):
    """Images stored one per file (JPEG, PNG, ...), decoded on access."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        classes: Sequence[str],
        image_size: int,
    ):
        super().__init__(classes, labels, image_size)
        if len(paths) != len(self.labels):
            raise ValueError(f"{len(paths)} paths for {len(self.labels)} labels")
        self.paths = [str(path) for path in paths]

    def pixels(self, index: int) -> Tensor:
        return read_image(self.paths[index])
