"""Convolutional visual systems with named feature taps (for the perceptual loss).

Two backbones share one interface (:class:`Backbone`): ``vgg16`` (torchvision's VGG16
``features`` up to relu5_3, as in the paper) and ``small`` (a five-layer CNN that trains
from scratch on a CPU in minutes; the default). Weights for ``vgg16``:

* ``imagenet`` - torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (downloaded into the torch
  cache when online, or read from it when already there);
* ``stylized:PATH_OR_URL`` - a Stylized-ImageNet VGG16 checkpoint (Geirhos et al. 2019;
  the original is ``vgg16_train_60_epochs_lr0.01-6c6fcc9f.pth.tar`` from
  https://github.com/rgeirhos/texture-vs-shape, shared there through a Google Drive folder);
* any local state-dict file or URL;
* ``none`` - random initialisation.

Checkpoints may wrap the weights in ``{"state_dict": ...}`` and carry ``module.``
components from ``DataParallel`` (``module.features.0.weight`` or
``features.module.0.weight``); both are handled.
"""

from __future__ import annotations

import itertools
import math
import os
import urllib.error
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

BACKBONES = ("small", "vgg16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
SMALL_TAPS = {"relu1": 0, "relu2": 1, "relu3": 2, "relu4": 3, "relu5": 4}


class Backbone(nn.Module):
    """A sequential CNN whose intermediate activations can be read by name.

    ``forward(images)`` returns the last feature map; ``forward(images, taps=names)`` the
    named activations (the perceptual loss reads them). ``images`` are ``[N, 3, H, W]``
    in ``[0, 1]``; the backbone normalises them itself (ImageNet statistics for pretrained
    VGG16 weights, otherwise a plain centring to ``[-1, 1]``).
    """

    def __init__(
        self, name: str, features: nn.Sequential, tap_index: Mapping[str, int], pretrained: bool
    ) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.tap_index = dict(tap_index)
        self.pretrained = pretrained
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if pretrained else ((0.5,) * 3, (0.5,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self.tap_index)

    def forward(self, images: Tensor, taps: Sequence[str] | None = None) -> Tensor | list[Tensor]:
        """The final feature map, or with ``taps`` the activations at those named taps
        (in the order given; the pass stops at the last one needed)."""
        x = (images - self.mean) / self.std
        if taps is None:
            return self.features(x)
        unknown = [n for n in taps if n not in self.tap_index]
        if unknown or not taps:
            raise ValueError(
                f"unknown or no taps {list(taps)} for backbone {self.name!r}; "
                f"known: {list(self.tap_index)}"
            )
        wanted = {self.tap_index[n] for n in taps}
        found: dict[int, Tensor] = {}
        for i, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                found[i] = x
        return [found[self.tap_index[n]] for n in taps]

    def output_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(channels, height, width) of the final map for ``image_size`` inputs."""
        param = next(self.parameters())
        with torch.no_grad():
            out = self.forward(torch.zeros(1, 3, *image_size, device=param.device))
        return tuple(out.shape[1:])  # type: ignore[return-value]


def small_features(width: int = 32) -> nn.Sequential:
    """Five blocks of 3x3 conv, GroupNorm and ReLU; four of them stride 2 (32 px -> 2x2).

    The per-image normalisation is what makes training from scratch fast and stable:
    without it the default game learns about ten times slower (see the README). Being
    per image, it behaves the same in training and evaluation and mixes no statistics
    between photos and sketches.
    """
    channels = [3, width, width, 2 * width, 2 * width, 4 * width]
    strides = [1, 2, 2, 2, 2]
    blocks = [
        nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            nn.GroupNorm(math.gcd(8, c_out), c_out),
            nn.ReLU(),
        )
        for (c_in, c_out), stride in zip(itertools.pairwise(channels), strides, strict=True)
    ]
    return nn.Sequential(*blocks)


def vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 ``features`` up to relu5_3 (layers 0-29, same indices and
    initialisation), built without the 120M-parameter classifier."""
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])[:30]
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def make_backbone(
    name: str = "small", weights: str | None = None, *, width: int = 32, load: bool = True
) -> Backbone:
    """Build a backbone by name and load ``weights`` (see the module docstring).

    ``weights=None`` means the backbone's default: ``imagenet`` for ``vgg16``, ``none``
    for ``small``. ``width`` is the first layer's channel count of ``small``.
    ``load=False`` sets the backbone up for ``weights`` (its input normalisation) without
    reading them, for when a checkpoint will supply every weight.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if weights is None:
        weights = default_weights(name)
    if name == "vgg16":
        features = vgg16_features()
        taps = VGG16_TAPS
    else:
        if weights in ("imagenet",) or weights.startswith("stylized"):
            raise ValueError(f"weights {weights!r} exist only for --backbone vgg16")
        features = small_features(width)
        taps = SMALL_TAPS
    # Only VGG16 weights come from ImageNet-normalised training; our small CNN always
    # sees images centred to [-1, 1], so its own saved weights load consistently.
    backbone = Backbone(name, features, taps, pretrained=name == "vgg16" and weights != "none")
    if load and weights != "none":
        load_backbone_weights(backbone, read_weights(weights))
    return backbone


def default_weights(backbone: str) -> str:
    """``imagenet`` for ``vgg16`` (as in the paper), ``none`` (train from scratch) otherwise."""
    return "imagenet" if backbone == "vgg16" else "none"


def read_weights(spec: str) -> dict[str, Tensor]:
    """Read a state dict for ``spec``: ``imagenet``, ``stylized:PATH_OR_URL``, a file or URL."""
    if spec == "imagenet":
        weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
        try:
            return weights.get_state_dict(progress=True)
        except (urllib.error.URLError, OSError) as err:
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise RuntimeError(
                f"could not download the ImageNet VGG16 weights from {weights.url} ({err}). "
                f"Offline: fetch that file elsewhere and either copy it to {cache} or pass "
                "its path with --weights /path/to/vgg16-397923af.pth"
            ) from err
    if spec == "stylized":
        raise ValueError(
            "--weights stylized needs a checkpoint: --weights stylized:PATH_OR_URL (e.g. "
            "vgg16_train_60_epochs_lr0.01-6c6fcc9f.pth.tar from "
            "https://github.com/rgeirhos/texture-vs-shape)"
        )
    if spec.startswith("stylized:"):
        spec = spec.removeprefix("stylized:")
    if spec.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(spec, map_location="cpu", progress=True)
    if not os.path.isfile(spec):
        raise FileNotFoundError(
            f"weights file {spec!r} not found; --weights takes imagenet, stylized:PATH_OR_URL, "
            "none, or a state-dict file or URL"
        )
    try:
        return torch.load(spec, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read weights file {spec!r}: {err}") from err


def load_backbone_weights(backbone: Backbone, state: Mapping[str, Tensor]) -> None:
    """Load a (possibly wrapped) VGG16 / backbone state dict into ``backbone.features``.

    Accepts ``{"state_dict": ...}`` wrappers, ``module.`` components anywhere in a key,
    full-model dicts (``features.N.*``; classifier keys are ignored) and features-only
    dicts (``N.*``). Raises ``ValueError`` naming the missing or mismatched keys.
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = [p for p in key.split(".") if p != "module"]
        if parts and parts[0] == "features":
            parts = parts[1:]
        if parts and parts[0].isdigit() and int(parts[0]) < len(backbone.features):
            cleaned[".".join(parts)] = value
    expected = backbone.features.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    wrong = [
        f"{k}: file {tuple(cleaned[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in cleaned and cleaned[k].shape != v.shape
    ]
    if missing or wrong:
        raise ValueError(
            f"weights do not fit backbone {backbone.name!r}: "
            f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}; shape mismatch {wrong[:4]}"
        )
    backbone.features.load_state_dict(cleaned)
