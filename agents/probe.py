"""How good is a visual representation? Linear-probe and k-NN accuracy on frozen features.

The two standard measures of self-supervised learning: a linear classifier trained on the
frozen features of the training split (multinomial logistic regression, full batch, by
L-BFGS: deterministic and with no learning rate to tune), and a weighted k-nearest-
neighbour vote in cosine similarity (k = 20, votes ``exp(sim / 0.07)``, as Wu et al. 2018
and DINO report it). Both are scored on another split (validation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Callable[[Tensor], Tensor],
    n_images: int,
    device: torch.device,
    batch_size: int = 500,
) -> Tensor:
    """Globally average-pooled final feature maps ``[n_images, C]`` (on the CPU) of the
    images ``images(indices)`` returns as float ``[N, 3, H, W]`` in ``[0, 1]``."""
    was_training = backbone.training
    backbone.eval()
    try:
        chunks = []
        for start in range(0, n_images, batch_size):
            ids = torch.arange(start, min(n_images, start + batch_size))
            maps = backbone(images(ids).to(device))
            chunks.append(maps.float().mean(dim=(2, 3)).cpu())
        return torch.cat(chunks)
    finally:
        backbone.train(was_training)


def linear_probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    weight_decay: float = 1e-4,
    iterations: int = 100,
) -> float:
    """Accuracy on ``test`` of a logistic regression fitted on standardised ``train``
    features (float64, L-BFGS, a small L2 penalty)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x = ((train_x - mean) / std).double()
    test_x = ((test_x - mean) / std).double()
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    linear = nn.Linear(train_x.shape[1], n_classes).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), max_iter=iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(train_x), train_y)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return (linear(test_x).argmax(1) == test_y).double().mean().item()


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Accuracy on ``test`` of a vote among the ``k`` most cosine-similar training
    features, each weighted by ``exp(similarity / temperature)``."""
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    k = min(k, len(train_x))
    correct = 0
    for start in range(0, len(test_x), 1000):
        similarity = test_x[start : start + 1000] @ train_x.T
        top, index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(top), n_classes).scatter_add_(
            1, train_y[index], (top / temperature).exp()
        )
        correct += (votes.argmax(1) == test_y[start : start + 1000]).sum().item()
    return correct / len(test_x)
