"""STL-10 (96 px, 10 classes), split as in the paper: the 5,000 labelled training images
minus 100 held out for validation (10 per class, chosen by `seed`), and the 8,000 test
images. The binaries are memory-mapped, so loading is instant and cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import STL10
from torchvision.datasets.utils import download_and_extract_archive

from .common import (
    ArrayImages,
    check_image_size,
    check_split,
    download_hint,
    fetch,
    not_found,
    train_or_val,
)

IMAGE_SIZE = 96
VAL_SIZE = 100
FOLDER = STL10.base_folder  # stl10_binary
FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")
URL, ARCHIVE, MD5 = STL10.url, STL10.filename, STL10.tgz_md5


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> ArrayImages:
    """STL-10 `split` from `root/stl10_binary` (train/val from train_X.bin, test from test_X.bin)."""
    check_split(split, "STL-10", unlabelled=("unlabeled", "train+unlabeled"))
    image_size = check_image_size(image_size, IMAGE_SIZE)
    folder = Path(root) / FOLDER
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing and download:
        fetch(
            lambda: download_and_extract_archive(URL, root, filename=ARCHIVE, md5=MD5),
            "STL-10",
            URL,
        )
        missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise not_found("STL-10", folder, missing, download_hint(URL))

    part = "test" if split == "test" else "train"
    images = MappedImages(folder / f"{part}_X.bin")
    labels = np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images):
        raise ValueError(
            f"STL-10 files disagree: {part}_X.bin holds {len(images)} images but "
            f"{part}_y.bin {len(labels)} labels; re-download with download=True"
        )
    classes = [name.strip() for name in (folder / "class_names.txt").read_text().splitlines()]
    classes = [name for name in classes if name]
    rows = list(range(len(labels)))
    if split != "test":
        rows = train_or_val(labels, split, VAL_SIZE, seed)
    return ArrayImages(images, rows, labels[rows], classes, image_size)


class MappedImages:
    """An STL-10 image binary, memory-mapped on first access as `[N, 3, 96, 96]`.

    The file stores each channel column-major, hence the transpose. Pickles as its
    path, so DataLoader workers map the file themselves instead of copying it.
    """

    IMAGE_BYTES = 3 * 96 * 96

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        if size == 0 or size % self.IMAGE_BYTES:
            raise ValueError(
                f"{path} holds {size} bytes, not a whole number of 96x96 RGB images; "
                "the file is truncated or corrupted: delete it and re-download"
            )
        self.count = size // self.IMAGE_BYTES
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row: int) -> np.ndarray:
        if self._array is None:
            raw = np.memmap(self.path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
            self._array = raw.transpose(0, 1, 3, 2)
        return self._array[row]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}
