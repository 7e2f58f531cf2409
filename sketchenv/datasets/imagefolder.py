"""Anyone's own photos as a game dataset (`imagefolder:PATH` in the registry).

Two layouts:
- `PATH/{train,val,test}/<class>/*`: used as given; classes are the union of the class
  folders over the split folders present, so a label means the same in every split.
- `PATH/<class>/*`: split 80/10/10 per class (stratified) by `seed`.

Images (any extension torchvision's ImageFolder reads) are cut to their maximal centred
square and resized to `image_size`; by default `image_size` is the shorter side of the
first image (sorted order, train folder first), so a folder of equal-sized images keeps
its size. Pass `image_size` when sizes vary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from .common import (
    SPLITS,
    FileImages,
    check_image_size,
    check_split,
    read_image,
    stratified_split,
)

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def load(
    path: str | Path, split: str = "train", *, image_size: int | None = None, seed: int = 0
) -> FileImages:
    """The `split` of the image folder at `path` (see the module docstring for layouts)."""
    check_split(split, "imagefolder")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise TypeError(f"imagefolder: seed must be an integer, got {seed!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"imagefolder: {root.resolve()} is not a directory; expected PATH/<class>/<image> "
            "or PATH/{train,val,test}/<class>/<image>"
        )
    split_dirs = [root / name for name in SPLITS if (root / name).is_dir()]
    if split_dirs:
        if not (root / split).is_dir():
            present = ", ".join(d.name for d in split_dirs)
            raise FileNotFoundError(
                f"imagefolder: {root / split} does not exist; {root} has split folders "
                f"{present} only. Add {split}/<class>/ folders or pick an existing split."
            )
        classes = sorted({name for d in split_dirs for name in _class_names(d)})
        paths, labels = _scan(root / split, classes)
        reference = _scan(split_dirs[0], classes)[0]
    else:
        classes = _class_names(root)
        all_paths, all_labels = _scan(root, classes)
        part = stratified_split(all_labels, list(FRACTIONS.values()), seed)[SPLITS.index(split)]
        paths, labels = [all_paths[i] for i in part], [all_labels[i] for i in part]
        reference = all_paths
    if not paths:
        raise ValueError(f"imagefolder: the {split} split of {root} holds no images")
    if image_size is None:
        image_size = min(read_image((reference or paths)[0]).shape[-2:])
    return FileImages(paths, labels, classes, check_image_size(image_size, 1))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


def _class_names(folder: Path) -> list[str]:
    """The class folders under `folder`; refuses loose images (no labels for the games)."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [f for f in folder.iterdir() if _is_image(f)]
    if loose:
        raise ValueError(
            f"imagefolder: {folder} holds images directly (e.g. {loose[0].name}) but games need "
            f"labels (OO games pick candidates by class); put them in {folder}/<class>/ folders"
        )
    if not classes:
        raise FileNotFoundError(f"imagefolder: {folder} has no class folders (<class>/<image>)")
    return classes


def _scan(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image paths and labels under `folder/<class>/` (recursively), in sorted order."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).rglob("*") if _is_image(f))
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels
