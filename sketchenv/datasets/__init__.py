"""Datasets for the sketching game, by name.

    make_dataset("shapes")                     # built in, procedural, no download
    make_dataset("stl10", "test", root="./data", download=True)
    make_dataset("imagefolder:photos/")        # photos/<class>/*.jpg, or photos/{train,val,test}/<class>/*

Every dataset yields `(image, label)`: a float tensor `[3, H, W]` in [0, 1] and an int,
and has `classes` and cheap `labels`. Dataset modules are imported only when asked for,
so one dataset's dependencies never burden another. Any other torch `Dataset` of
`(image, label)` works too: `labels_of` and `classes_of` read what the games need.
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Sized

from torch.utils.data import Dataset, Subset

from .common import SPLITS, check_image_size, check_split

DATASETS = (
    "shapes",
    "stl10",
    "cifar10",
    "cifar100",
    "mnist",
    "celeba",
    "caltech101",
    "tinyimagenet",
)
IMAGEFOLDER = "imagefolder:"

__all__ = ["DATASETS", "SPLITS", "classes_of", "labels_of", "make_dataset"]


def make_dataset(
    name: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> Dataset:
    """The `split` ("train", "val" or "test") of the dataset called `name`.

    `name` is one of `DATASETS` or "imagefolder:PATH". `image_size` resizes to a square
    side (None: the dataset's own size); `root` and `download` locate or fetch the files
    of downloadable datasets; `seed` fixes every random choice (splits, generated images).
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {name!r}")
    is_folder = name[: len(IMAGEFOLDER)].lower() == IMAGEFOLDER
    if not is_folder and name.lower() not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or "
            "'imagefolder:PATH' for a folder of class sub-folders of images"
        )
    check_split(split, name)
    check_image_size(image_size, default=0)
    if is_folder:
        path = name[len(IMAGEFOLDER) :]
        if not path:
            raise ValueError(
                "imagefolder needs a folder: write 'imagefolder:PATH', with PATH holding "
                "one sub-folder of images per class"
            )
        module = importlib.import_module(".imagefolder", __name__)
        return module.load(path, split, image_size=image_size, seed=seed)
    module = importlib.import_module(f".{name.lower()}", __name__)
    return module.load(split, image_size=image_size, root=root, download=download, seed=seed)


def labels_of(dataset: Dataset) -> list[int]:
    """One int label per item: read from `labels` or `targets` when the dataset has them
    (as ours and torchvision's do), otherwise by loading every item once."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"need a map-style Dataset with a length, got {type(dataset).__name__}")
    if isinstance(dataset, Subset):
        parent = labels_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    stored = getattr(dataset, "labels", None)
    if stored is None:
        stored = getattr(dataset, "targets", None)  # torchvision's name
    labels = stored if stored is not None else (dataset[i][1] for i in range(len(dataset)))
    checked = [_as_label(label, i) for i, label in enumerate(labels)]
    if len(checked) != len(dataset):
        raise ValueError(
            f"{type(dataset).__name__} has {len(checked)} labels for {len(dataset)} items"
        )
    return checked


def classes_of(dataset: Dataset) -> list[str]:
    """Class names: the dataset's `classes` when it has them, else "0", "1", ... up to
    its largest label."""
    while isinstance(dataset, Subset) and getattr(dataset, "classes", None) is None:
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return [str(name) for name in classes]
    return [str(c) for c in range(max(labels_of(dataset), default=-1) + 1)]


def _as_label(label: object, index: int) -> int:
    """`label` as a non-negative int (also from numpy or 0-d tensor integers)."""
    try:
        value = operator.index(label)
    except TypeError:
        raise TypeError(
            f"item {index} has label {label!r} ({type(label).__name__}); labels must be "
            "integer class indices"
        ) from None
    if value < 0:
        raise ValueError(f"item {index} has label {value}; class indices must be >= 0")
    return value
