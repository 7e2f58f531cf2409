"""MNIST (28 px digits, grey repeated to 3 channels): train is the 60,000 training
images minus 5,000 held out for validation (stratified, chosen by `seed`); test is the
official 10,000. Reading and downloading go through torchvision's MNIST.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import MNIST

from .common import (
    ArrayImages,
    check_image_size,
    check_split,
    download_hint,
    fetch,
    not_found,
    train_or_val,
)

IMAGE_SIZE = 28
VAL_FRACTION = 1 / 12  # 5,000 of the 60,000 training images
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> ArrayImages:
    """MNIST `split` from `root/MNIST/raw` (the unpacked idx files)."""
    check_split(split, "MNIST")
    image_size = check_image_size(image_size, IMAGE_SIZE)
    folder = Path(root) / "MNIST" / "raw"
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing and download:
        fetch(lambda: MNIST(root, download=True), "MNIST", " or ".join(MNIST.mirrors))
        missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise not_found("MNIST", folder, missing, download_hint(MNIST.mirrors[0]))

    mnist = MNIST(root, train=split != "test")
    labels = mnist.targets.numpy()
    rows = list(range(len(labels)))
    if split != "test":
        rows = train_or_val(labels, split, round(len(labels) * VAL_FRACTION), seed)
    return ArrayImages(mnist.data, rows, labels[rows], MNIST.classes, image_size)
