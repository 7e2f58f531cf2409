"""TinyImageNet-200 (64 px, 200 classes). The official test images are unlabelled, so
our `test` split is the official validation set (10,000 images, labels read from
val/val_annotations.txt) and our `val` split is carved out of the official training
set: 50 images per class chosen by `seed`, leaving 90,000 for `train`.

torchvision has no TinyImageNet class; the download (cs231n zip) and reader are here.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import download_and_extract_archive

from .common import (
    FileImages,
    check_image_size,
    check_split,
    download_hint,
    fetch,
    not_found,
    train_or_val,
)

IMAGE_SIZE = 64
VAL_FRACTION = 0.1  # 50 of the 500 training images per class
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
REQUIRED = ("wnids.txt", "train/", "val/images/", "val/val_annotations.txt")


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> FileImages:
    """TinyImageNet `split` from `root/tiny-imagenet-200`.

    `classes` are readable names from words.txt; `dataset.wnids` keeps the WordNet ids.
    """
    check_split(split, "TinyImageNet")
    image_size = check_image_size(image_size, IMAGE_SIZE)
    folder = Path(root) / FOLDER
    if _missing(folder) and download:
        fetch(
            lambda: download_and_extract_archive(URL, root, filename=ARCHIVE, md5=MD5),
            "TinyImageNet",
            URL,
        )
    missing = _missing(folder)
    if missing:
        raise not_found("TinyImageNet", folder, missing, download_hint(URL))

    wnids = sorted(set((folder / "wnids.txt").read_text().split()))
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    if split == "test":
        paths, labels = _official_val(folder, label_of)
    else:
        paths, labels = _official_train(folder, wnids)
        items = train_or_val(labels, split, round(len(labels) * VAL_FRACTION), seed)
        paths, labels = [paths[i] for i in items], [labels[i] for i in items]
    dataset = FileImages(paths, labels, _names(folder, wnids), image_size)
    dataset.wnids = wnids
    return dataset


def _missing(folder: Path) -> list[str]:
    return [name for name in REQUIRED if not (folder / name).exists()]


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMG_EXTENSIONS)


def _official_train(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise not_found("TinyImageNet", folder, [f"train/{wnid}/images/"], download_hint(URL))
        files = _images(images)
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels


def _official_val(folder: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    """The labelled official validation images (`file<TAB>wnid<TAB>box` per line)."""
    annotations = folder / "val" / "val_annotations.txt"
    wnid_of = {}
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            wnid_of[fields[0]] = fields[1]
    paths = _images(folder / "val" / "images")
    unknown = [p.name for p in paths if wnid_of.get(p.name) not in label_of]
    if unknown:
        raise ValueError(
            f"{len(unknown)} images in {folder / 'val' / 'images'} (e.g. {unknown[0]}) have no "
            f"known class in {annotations}; the files do not match: re-download them"
        )
    return paths, [label_of[wnid_of[p.name]] for p in paths]


def _names(folder: Path, wnids: list[str]) -> list[str]:
    """First synonym from words.txt per wnid (wnid appended when names clash)."""
    words = folder / "words.txt"
    lines = words.read_text().splitlines() if words.is_file() else []
    synonyms = dict(line.split("\t", 1) for line in lines if "\t" in line)
    names = [synonyms.get(wnid, wnid).split(",")[0].strip() or wnid for wnid in wnids]
    return [
        f"{name} ({wnid})" if names.count(name) > 1 else name
        for name, wnid in zip(names, wnids, strict=True)
    ]
