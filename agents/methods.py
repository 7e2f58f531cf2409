"""Pretraining objectives for a visual system: Barlow Twins, SimCLR and supervised.

Each method is a small module holding its trainable head and computing its loss from
the backbone's pooled features of ``n_views`` augmented views of a batch::

    method = make_method("barlow", feature_size=128, n_classes=12)
    views = [augment(images) for _ in range(method.n_views)]
    loss = method([pool(backbone(v)) for v in views], labels)

* ``barlow`` (Zbontar et al. 2021; the paper's future work): make the cross-correlation
  of two views' projections the identity. No negatives, no labels.
* ``simclr`` (Chen et al. 2020): InfoNCE over the batch; each view must find its twin
  among the other ``2N - 2`` views. No labels.
* ``supervised``: cross-entropy of a linear classifier on the training labels (what
  ImageNet weights are for the paper's VGG16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("barlow", "simclr", "supervised")


def projector(sizes: Sequence[int]) -> nn.Sequential:
    """An MLP with BatchNorm and ReLU after every layer but the last (as in both papers)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=i == len(sizes) - 2))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(sizes[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


class BarlowTwins(nn.Module):
    """Barlow Twins: ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` where ``C`` is
    the cross-correlation of the two views' batch-standardised projections."""

    n_views = 2

    def __init__(
        self, feature_size: int, sizes: Sequence[int] = (1024, 1024, 1024), lambd: float = 5e-3
    ):
        super().__init__()
        self.projector = projector([feature_size, *sizes])
        self.lambd = lambd

    def forward(self, features: Sequence[Tensor], labels: Tensor | None = None) -> Tensor:
        z1, z2 = (self.projector(f) for f in features)
        return barlow_twins_loss(z1, z2, self.lambd)


class SimCLR(nn.Module):
    """SimCLR's NT-Xent: cross-entropy of each view's cosine similarities (divided by the
    ``temperature``) to all other views, its twin being the right answer."""

    n_views = 2

    def __init__(
        self, feature_size: int, sizes: Sequence[int] = (512, 128), temperature: float = 0.2
    ):
        super().__init__()
        self.projector = projector([feature_size, *sizes])
        self.temperature = temperature

    def forward(self, features: Sequence[Tensor], labels: Tensor | None = None) -> Tensor:
        z1, z2 = (self.projector(f) for f in features)
        return info_nce_loss(z1, z2, self.temperature)


class Supervised(nn.Module):
    """Cross-entropy of a linear classifier on the pooled features; also the classifier
    that a weights file keeps (for recognising sketches)."""

    n_views = 1

    def __init__(self, feature_size: int, n_classes: int):
        super().__init__()
        self.classifier = nn.Linear(feature_size, n_classes)

    def forward(self, features: Sequence[Tensor], labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise ValueError("supervised pretraining needs labels")
        return F.cross_entropy(self.classifier(features[0]), labels)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float) -> Tensor:
    """``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2`` for the cross-correlation
    ``C = z1^T z2 / N`` of the views' embeddings ``[N, D]``, each standardised per
    dimension over the batch (population statistics)."""
    z1, z2 = standardise(z1), standardise(z2)
    c = z1.T @ z2 / z1.shape[0]
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + lambd * off_diagonal


def info_nce_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent: mean cross-entropy, over all ``2N`` views, of picking the twin view among
    the other ``2N - 1`` by cosine similarity divided by ``temperature``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -torch.inf)
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, twins)


def standardise(z: Tensor) -> Tensor:
    """Zero mean and unit variance per dimension over the batch."""
    return (z - z.mean(0)) / (z.std(0, unbiased=False) + 1e-5)


def make_method(name: str, feature_size: int, n_classes: int) -> nn.Module:
    """The objective ``name`` (one of ``METHODS``) for features of ``feature_size``."""
    if name == "barlow":
        return BarlowTwins(feature_size)
    if name == "simclr":
        return SimCLR(feature_size)
    if name == "supervised":
        return Supervised(feature_size, n_classes)
    raise ValueError(f"unknown pretraining method {name!r}; choose one of {METHODS}")


def pool(maps: Tensor) -> Tensor:
    """Global average pooling: ``[N, C, H, W]`` -> ``[N, C]``."""
    return maps.mean(dim=(2, 3))
