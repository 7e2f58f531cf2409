"""CIFAR-10 (32 px, 10 classes): train is the 50,000 training images minus 5,000 held
out for validation (500 per class, chosen by `seed`); test is the official 10,000.

The python-pickle batches are read here directly; torchvision's file list, URL and
checksums drive the download. `cifar100.py` reuses `load_cifar`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10
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

IMAGE_SIZE = 32
VAL_FRACTION = 0.1  # 5,000 of the 50,000 training images


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> ArrayImages:
    """CIFAR-10 `split` from `root/cifar-10-batches-py`."""
    return load_cifar(
        CIFAR10, "CIFAR-10", split, image_size=image_size, root=root, download=download, seed=seed
    )


def load_cifar(
    spec: type[CIFAR10],
    name: str,
    split: str,
    *,
    image_size: int | None,
    root: str,
    download: bool,
    seed: int,
) -> ArrayImages:
    """Load a CIFAR variant described by torchvision's class `spec` (files, meta, URL)."""
    check_split(split, name)
    image_size = check_image_size(image_size, IMAGE_SIZE)
    folder = Path(root) / spec.base_folder
    files = [entry[0] for entry in spec.train_list + spec.test_list] + [spec.meta["filename"]]
    missing = [file for file in files if not (folder / file).is_file()]
    if missing and download:
        fetch(
            lambda: download_and_extract_archive(
                spec.url, root, filename=spec.filename, md5=spec.tgz_md5
            ),
            name,
            spec.url,
        )
        missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise not_found(name, folder, missing, download_hint(spec.url))

    batches = spec.test_list if split == "test" else spec.train_list
    images, labels = _read_batches([folder / entry[0] for entry in batches])
    meta = _unpickle(folder / spec.meta["filename"])
    if spec.meta["key"] not in meta:
        raise ValueError(
            f"{folder / spec.meta['filename']} has no {spec.meta['key']!r}: it is not the "
            f"{name} class list; delete it and download again (--download)"
        )
    classes = meta[spec.meta["key"]]
    rows = list(range(len(labels)))
    if split != "test":
        rows = train_or_val(labels, split, round(len(labels) * VAL_FRACTION), seed)
    return ArrayImages(images, rows, labels[rows], classes, image_size)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, strings, numpy arrays), so a
    planted batch file cannot run code."""

    ALLOWED = frozenset(
        [("_codecs", "encode")]  # how protocol-2 pickles store bytes
        + [
            (module, name)
            for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
            for name in ("_reconstruct", "ndarray", "dtype", "scalar")
        ]
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, not numpy data")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR python batch as a dict; a damaged or foreign file is named in the error."""
    try:
        with open(path, "rb") as file:
            batch = _BatchUnpickler(file, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a CIFAR python batch ({type(err).__name__}: {err}): the file is "
            "corrupt or truncated; delete it and download again (--download)"
        ) from err
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR python batch (it holds a {type(batch).__name__})")
    return batch


def _read_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 3, 32, 32]` uint8 and labels `[N]` from CIFAR pickle batches."""
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        if "data" not in batch or not {"labels", "fine_labels"} & set(batch):
            raise ValueError(f"{path}: no 'data' and 'labels' in it: not a CIFAR batch")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(
                f"{path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 [N, 3072]"
            )
        batch_labels = batch["labels"] if "labels" in batch else batch["fine_labels"]
        if len(batch_labels) != len(data):
            raise ValueError(f"{path}: {len(batch_labels)} labels for {len(data)} images")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch_labels)
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)
