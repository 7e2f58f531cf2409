"""The network whose features the perceptual loss compares (``--perceptual-net``).

Chosen independently of the agents' encoder:

* ``agents``: the agents' own backbone (the paper's setting when the encoder is a frozen
  pretrained VGG16; with an encoder trained in the game the loss follows the game);
* ``edges``: a fixed multi-scale oriented-edge comparison that needs no weights;
* ``drawing``: the sketch's ink against the image's line drawing, at several scales; no
  weights either (both in :mod:`agents.edges`);
* ``vgg16`` (ImageNet weights), ``vgg16:stylized:PATH_OR_URL``, ``vgg16:FILE``: VGG16's
  relu1_2 ... relu5_3 features, as in the paper;
* a weights file from ``python -m train.pretrain`` (or a shipped name, see
  :mod:`agents.zoo`): the backbone it describes, at this game's image size.

The network is frozen and kept out of the optimiser; the loss's gradients reach only the
sketches (:func:`agents.losses.perceptual_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from agents.backbones import Backbone, make_backbone, read_weights
from agents.edges import DrawingNet, EdgeNet
from agents.zoo import resolve_weights

PERCEPTUAL_NETS = ("agents", "edges", "drawing", "vgg16", "vgg16:WEIGHTS", "FILE")
FIXED_NETS = {"edges": EdgeNet, "drawing": DrawingNet}


def make_perceptual_net(
    spec: str, agents_backbone: Backbone, image_size: Sequence[int]
) -> nn.Module:
    """The perceptual network ``spec`` names (see the module docstring), frozen."""
    if spec == "agents":
        return agents_backbone
    if spec in FIXED_NETS:
        net: nn.Module = FIXED_NETS[spec]()
    elif spec == "vgg16" or spec.startswith("vgg16:"):
        try:
            net = make_backbone("vgg16", spec.partition(":")[2] or "imagenet")
        except ConnectionError as err:  # ImageNet weights offline: say how to pass a file here
            raise ConnectionError(
                f"{err}; for the perceptual loss: --perceptual-net vgg16:/path/to/vgg16-397923af.pth"
            ) from err
    else:
        path = resolve_weights(spec)
        if path is None:
            raise ValueError(
                f"unknown --perceptual-net {spec!r}; choose agents, edges, drawing, vgg16, "
                "vgg16:WEIGHTS, a weights file from python -m train.pretrain, or a shipped name"
            )
        _, info = read_weights(path)
        if info is None:
            raise ValueError(
                f"--perceptual-net {spec!r} is a plain state dict: say which network it is "
                "with vgg16:FILE, or give a weights file from python -m train.pretrain"
            )
        net = make_backbone(
            info["backbone"], path, width=info.get("width") or 32, image_size=image_size
        )
    net.requires_grad_(False)
    return net.eval()


def default_tap_weights(net: nn.Module) -> list[float]:
    """The weight of each of ``net``'s taps when ``--perceptual-weights`` is unset: the
    network's own ``default_weights`` if it has them (``drawing``), else 1 each."""
    return list(getattr(net, "default_weights", [1.0] * len(net.tap_names)))
