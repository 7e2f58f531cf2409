"""Recognisability: can an independent classifier tell what a sketch shows?

A :class:`Recogniser` is the backbone and linear classifier of a supervised weights file
(``python -m train.pretrain --method supervised``), trained on the dataset's real
training images only. Applied to the sketches, the fraction of sketches it assigns to the
class of the image they were drawn from is their *recognisability* (chance: one over the
number of classes); applied to the images themselves it gives the recogniser's own
accuracy, the ceiling to compare with. It must never have been used to train the agents:
:func:`check_independent` refuses a recogniser file that the run used as its encoder's
weights or as its perceptual network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from agents.backbones import read_classifier
from agents.methods import pool
from agents.zoo import resolve_weights, shipped


class Recogniser(nn.Module):
    """Class predictions for ``[N, 3, H, W]`` images from a supervised weights file."""

    def __init__(self, spec: str, image_size: Sequence[int], classes: Sequence[str]) -> None:
        super().__init__()
        path = resolve_weights(spec)
        if path is None:
            raise FileNotFoundError(
                f"recogniser {spec!r} not found: give a weights file from "
                "python -m train.pretrain --method supervised, or a shipped name"
            )
        self.backbone, self.classifier, self.info = read_classifier(path, tuple(image_size))
        self.path = path
        known = [str(c) for c in self.info.get("classes", [])]
        if known != [str(c) for c in classes]:
            raise ValueError(
                f"recogniser {spec!r} was trained on the classes {known[:5]}... of "
                f"{self.info.get('dataset')}, not this dataset's {list(classes)[:5]}...: "
                "train one on this dataset with python -m train.pretrain --method supervised"
            )
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Predicted class indices ``[N]``."""
        return self.classifier(pool(self.backbone(images))).argmax(1)


def shipped_recogniser(dataset: str, image_size: Sequence[int]) -> str | None:
    """The shipped recogniser for ``dataset`` at ``image_size`` (``<dataset>-recogniser-<size>``),
    or None when none ships."""
    name = f"{dataset}-recogniser-{image_size[0]}"
    return name if name in shipped() else None


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_independent(recogniser: Recogniser, used: Iterable[str | None]) -> None:
    """Refuse a recogniser whose weights file is one of the files ``used`` in training."""
    mine = file_digest(recogniser.path)
    for spec in used:
        path = resolve_weights(spec) if spec else None
        if path is not None and file_digest(path) == mine:
            raise ValueError(
                f"the recogniser {recogniser.path} is the same file as {spec!r}, which trained "
                "these agents; recognisability needs a classifier never used in training "
                "(for example python -m train.pretrain --method supervised --seed 1)"
            )
