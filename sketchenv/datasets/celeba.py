"""CelebA faces with identities as classes, official splits (list_eval_partition.txt).

Each aligned 178x218 photo is cut to its maximal centred square and resized
(default 64 px; the paper's CelebA run uses 112). The official splits hold different
people, so each split's `classes` are the identities present in it (sorted by
identity number, named by it) and labels index that list.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets import CelebA
from torchvision.datasets.utils import download_file_from_google_drive, extract_archive

from .common import FileImages, check_image_size, check_split, fetch, not_found

IMAGE_SIZE = 64
FOLDER = CelebA.base_folder  # celeba
IMAGES = "img_align_celeba"
LISTS = ("identity_CelebA.txt", "list_eval_partition.txt")
PARTITIONS = {"train": "0", "val": "1", "test": "2"}
HOME = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> FileImages:
    """CelebA `split` from `root/celeba` (img_align_celeba/ plus the two list files).

    `seed` is unused: the splits are the official ones.
    """
    check_split(split, "CelebA")
    image_size = check_image_size(image_size, IMAGE_SIZE)
    folder = Path(root) / FOLDER
    if _missing(folder) and download:
        fetch(lambda: _download(folder), "CelebA", "Google Drive (torchvision's CelebA file ids)")
    missing = _missing(folder)
    if missing:
        raise not_found(
            "CelebA",
            folder,
            missing,
            "Pass download=True (`--download`; needs `pip install gdown`, and Google Drive "
            f"often refuses CelebA for quota), or get Align&Cropped images and the two "
            f"list files from {HOME} and unzip img_align_celeba.zip there.",
        )

    partition = _read_list(folder / "list_eval_partition.txt")
    identity = _read_list(folder / "identity_CelebA.txt")
    names = sorted(name for name, part in partition.items() if part == PARTITIONS[split])
    if not names:
        raise ValueError(f"{folder / 'list_eval_partition.txt'} lists no {split} images")
    unknown = [name for name in names if name not in identity]
    if unknown:
        raise ValueError(
            f"{len(unknown)} {split} images (e.g. {unknown[0]}) have no identity in "
            f"{folder / 'identity_CelebA.txt'}; the list files do not match: re-download them"
        )
    people = sorted({identity[name] for name in names}, key=int)
    label_of = {person: label for label, person in enumerate(people)}
    return FileImages(
        [folder / IMAGES / name for name in names],
        [label_of[identity[name]] for name in names],
        people,
        image_size,
    )


def _missing(folder: Path) -> list[str]:
    missing = [name for name in LISTS if not (folder / name).is_file()]
    if not (folder / IMAGES).is_dir():
        missing.insert(0, f"{IMAGES}/")
    return missing


def _read_list(path: Path) -> dict[str, str]:
    """A CelebA list file `image value` per line -> {image: value}."""
    pairs = (line.split() for line in path.read_text().splitlines())
    return {fields[0]: fields[1] for fields in pairs if len(fields) == 2}


def _download(folder: Path) -> None:
    """Fetch the aligned images and the two list files through torchvision's helpers."""
    wanted = {f"{IMAGES}.zip", *LISTS}
    for file_id, md5, filename in CelebA.file_list:
        if filename in wanted:
            download_file_from_google_drive(file_id, folder, filename, md5)
    extract_archive(os.fspath(folder / f"{IMAGES}.zip"))
