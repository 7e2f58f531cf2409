"""CIFAR-100 (32 px, the 100 fine classes): train is the 50,000 training images minus
5,000 held out for validation (50 per class, chosen by `seed`); test is the official 10,000.
"""

from __future__ import annotations

from torchvision.datasets import CIFAR100

from .cifar10 import load_cifar
from .common import ArrayImages


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> ArrayImages:
    """CIFAR-100 `split` from `root/cifar-100-python` (fine labels)."""
    return load_cifar(
        CIFAR100, "CIFAR-100", split, image_size=image_size, root=root, download=download, seed=seed
    )
