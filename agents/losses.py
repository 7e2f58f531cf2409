"""Game losses (multiclass hinge, cross-entropy), the paper's perceptual loss and the
drawing cost."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from agents.backbones import Backbone
from sketchenv.strokes import StrokeFormat

LOSSES = ("hinge", "ce")
DRAWING_COSTS = ("strokes", "ink")


def game_loss(scores: Tensor, targets: Tensor, kind: str = "hinge") -> Tensor:
    """Mean loss over games of ``scores [..., C]`` against ``targets [...]``.

    ``hinge`` is ``multi_margin_loss`` with margin 1 (it divides each game's sum over the
    wrong candidates by ``C``, as torch does); ``ce`` is cross-entropy over the scores.
    """
    flat_scores, flat_targets = scores.reshape(-1, scores.shape[-1]), targets.reshape(-1)
    if kind == "hinge":
        return F.multi_margin_loss(flat_scores, flat_targets, margin=1.0)
    if kind == "ce":
        return F.cross_entropy(flat_scores, flat_targets)
    raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")


def drawing_cost(
    strokes: Tensor, sketches: Tensor, stroke_format: StrokeFormat, kind: str, paper: float
) -> Tensor:
    """The cost of drawing, averaged over sketches: ``strokes``, the mean square root of the
    strokes' opacities (a soft count of the strokes used, over ``n_lines``: concave, so a
    faint stroke costs nearly as much as an opaque one and the sender drops strokes rather
    than fading them all); ``ink``, the mean distance of the sketches ``[..., 3, H, W]``
    from blank ``paper`` (1 white, 0 black)."""
    if kind == "strokes":
        if not stroke_format.opacity:
            raise ValueError("the 'strokes' drawing cost needs strokes with opacity")
        return (stroke_format.style(strokes)[..., 1] + 1e-8).sqrt().mean()
    if kind == "ink":
        return (sketches.float() - paper).abs().mean()
    raise ValueError(f"unknown drawing cost {kind!r}; choose one of {DRAWING_COSTS}")


def perceptual_distance(
    features_a: Sequence[Tensor], features_b: Sequence[Tensor], weights: Sequence[float]
) -> Tensor:
    """Per-image distance ``[N]`` between two lists of ``[N, C_l, H_l, W_l]`` feature maps.

    Per layer: unit-normalise over channels at each position, squared difference, sum over
    channels, mean over positions; then the weighted sum over layers (SPEC section 3).
    The squared difference is expanded, |â|² + |b̂|² - 2 â·b̂, so that ``b``'s (the
    sketches', which get gradients) normalised maps are never formed: half the time and
    memory of the direct form at VGG16's large early layers, equal to float rounding.
    """
    if not len(features_a) == len(features_b) == len(weights):
        raise ValueError("perceptual_distance needs one weight per pair of feature maps")
    total = features_a[0].new_zeros(features_a[0].shape[0])
    for a, b, w in zip(features_a, features_b, weights, strict=True):
        a_unit = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b_norm = b.norm(dim=1) + 1e-10
        squared = (
            a_unit.pow(2).sum(dim=1)
            + ((b_norm - 1e-10) / b_norm).pow(2)
            - 2 * (a_unit * b).sum(dim=1) / b_norm
        )
        total = total + w * squared.mean(dim=(1, 2))
    return total


def check_tap_weights(backbone: Backbone, weights: Sequence[float]) -> None:
    """Refuse perceptual-loss ``weights`` that are not one per tap of ``backbone``."""
    if len(weights) != len(backbone.tap_names):
        raise ValueError(
            f"--perceptual-weights needs {len(backbone.tap_names)} values for backbone "
            f"{backbone.name!r} (taps {list(backbone.tap_names)}), got {len(weights)}"
        )


def perceptual_loss(
    backbone: Backbone, images: Tensor, sketches: Tensor, weights: Sequence[float]
) -> Tensor:
    """Mean perceptual distance between images and their sketches (both ``[N, 3, H, W]``).

    ``weights`` has one entry per tap of ``backbone`` (layers weighted 0 are skipped). The
    backbone acts as a fixed loss network: gradients reach the sketches only, never the
    backbone's weights (otherwise a trainable backbone could shrink the loss by making all
    features alike). A network with a ``reference(images)`` method compares the sketches
    with that instead of the images, and one with a ``distance`` method uses it instead
    of :func:`perceptual_distance` (see :mod:`agents.edges`).
    """
    check_tap_weights(backbone, weights)
    used = [(name, w) for name, w in zip(backbone.tap_names, weights, strict=True) if w != 0]
    if not used:
        return sketches.new_zeros(())
    names, layer_weights = zip(*used, strict=True)
    fixed = {name: p.detach() for name, p in backbone.named_parameters()}
    with torch.no_grad():
        reference = getattr(backbone, "reference", None)
        images = reference(images) if reference is not None else images
        target = functional_call(backbone, fixed, (images,), {"taps": names})
    drawn = functional_call(backbone, fixed, (sketches,), {"taps": names})
    distance = getattr(backbone, "distance", perceptual_distance)
    return distance(target, drawn, layer_weights).mean()
