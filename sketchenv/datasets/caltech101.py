"""Caltech-101 (default 128 px as in the paper): the 101 object classes, split 70/15/15
per class by `seed`, with the training split balanced.

Classes are the folders of 101_ObjectCategories except BACKGROUND_Google (clutter, not
an object class), which leaves the paper's 101. As in torchvision, both `Faces` and
`Faces_easy` stay, although they hold the same photos (Faces_easy is the tight crop).

Balancing: every class of the training split is topped up to the size of the largest
one with extra copies of its own images, cycling through them in a seeded order; each
copy is a fixed augmented view (random square crop of 80-100 % of the side, random
left-right flip) drawn once from `seed`, so the same index always gives the same image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor
from torchvision.datasets import Caltech101
from torchvision.datasets.folder import IMG_EXTENSIONS

from .common import (
    FileImages,
    check_image_size,
    check_split,
    download_hint,
    fetch,
    fit_square,
    not_found,
    stratified_split,
)

IMAGE_SIZE = 128
FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
BACKGROUND = "BACKGROUND_Google"
URL = "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip"
MIN_CROP = 0.8

View = tuple[float, float, float, bool]  # crop side fraction, top and left offsets, flip


class AugmentedImages(FileImages):
    """File images where some items are fixed augmented views of their file."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        classes: Sequence[str],
        image_size: int,
        views: Sequence[View | None],
    ):
        super().__init__(paths, labels, classes, image_size)
        self.views = list(views)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        index = range(len(self))[index]
        view = self.views[index]
        if view is None:
            return super().__getitem__(index)
        scale, top, left, flip = view
        pixels = self.pixels(index)
        height, width = pixels.shape[-2:]
        side = max(1, round(scale * min(height, width)))
        crop = (round(top * (height - side)), round(left * (width - side)), side)
        return fit_square(pixels, self.image_size, crop=crop, flip=flip), self.labels[index]


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
    balance: bool = True,
) -> FileImages:
    """Caltech-101 `split` from `root/caltech101/101_ObjectCategories`.

    `balance=False` gives the plain training split (no re-sampled copies).
    """
    check_split(split, "Caltech-101")
    image_size = check_image_size(image_size, IMAGE_SIZE)
    folder = Path(root) / "caltech101" / "101_ObjectCategories"
    if not folder.is_dir() and download:
        fetch(lambda: Caltech101(root, download=True), "Caltech-101", URL)
    if not folder.is_dir():
        raise not_found(
            "Caltech-101",
            folder.parent,
            ["101_ObjectCategories/<class>/image_*.jpg"],
            download_hint(URL),
        )

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name != BACKGROUND)
    if not classes:
        raise not_found("Caltech-101", folder, ["<class>/image_*.jpg"], download_hint(URL))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir() if f.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise ValueError(f"Caltech-101 class folder {folder / name} holds no images")
        paths.extend(files)
        labels.extend([label] * len(files))

    parts = dict(
        zip(FRACTIONS, stratified_split(labels, list(FRACTIONS.values()), seed), strict=True)
    )
    items = parts[split]
    if split == "train" and balance:
        return _balanced(items, paths, labels, classes, image_size, seed)
    return FileImages([paths[i] for i in items], [labels[i] for i in items], classes, image_size)


def _balanced(
    items: list[int],
    paths: list[Path],
    labels: list[int],
    classes: list[str],
    image_size: int,
    seed: int,
) -> AugmentedImages:
    """Top every class up to the largest with augmented copies of its own images."""
    rng = np.random.default_rng([seed, 101])
    by_class = [[i for i in items if labels[i] == c] for c in range(len(classes))]
    target = max(len(members) for members in by_class)
    chosen: list[int] = []
    views: list[View | None] = []
    for members in by_class:
        if not members:
            continue
        order = rng.permutation(members)
        extras = [int(order[k % len(members)]) for k in range(target - len(members))]
        chosen.extend(members + extras)
        views.extend([None] * len(members))
        views.extend(
            (
                float(rng.uniform(MIN_CROP, 1)),
                float(rng.random()),
                float(rng.random()),
                bool(rng.random() < 0.5),
            )
            for _ in extras
        )
    return AugmentedImages(
        [paths[i] for i in chosen], [labels[i] for i in chosen], classes, image_size, views
    )
