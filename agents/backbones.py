"""Convolutional visual systems with named feature taps (for the perceptual loss).

Two backbones share one interface (:class:`Backbone`): ``vgg16`` (torchvision's VGG16
``features`` up to relu5_3, as in the paper) and ``small`` (a five-layer CNN that trains
from scratch on a CPU in minutes; the default). Weights for ``vgg16``:

* ``imagenet`` - torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (downloaded into the torch
  cache when online, or read from it when already there);
* ``stylized:PATH_OR_URL`` - a Stylized-ImageNet VGG16 checkpoint (Geirhos et al. 2019;
  the original is ``vgg16_train_60_epochs_lr0.01-6c6fcc9f.pth.tar`` from
  https://github.com/rgeirhos/texture-vs-shape, shared there through a Google Drive folder);
* a weights file shipped with sketchenv, by name (:mod:`agents.zoo`);
* any local state-dict file or URL;
* ``none`` - random initialisation.

Checkpoints may wrap the weights in ``{"state_dict": ...}`` and carry ``module.``
components from ``DataParallel`` (``module.features.0.weight`` or
``features.module.0.weight``); both are handled.

**Weights files** written by ``python -m train.pretrain`` (:func:`save_weights`) also
record what made them (method, dataset, image size, width, epochs, seed, linear-probe
accuracy, and the classifier of supervised pretraining). They load like any state dict,
but only into the backbone, width and image size they were made for.
"""

from __future__ import annotations

import itertools
import math
import urllib.error
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from agents.files import load_torch, save_torch
from agents.zoo import resolve_weights, shipped

BACKBONES = ("small", "vgg16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
SMALL_TAPS = {"relu1": 0, "relu2": 1, "relu3": 2, "relu4": 3, "relu5": 4}
NORMALISATIONS = ("centre", "imagenet")
WEIGHTS_FORMAT = "sketchenv-weights"
WEIGHTS_VERSION = 1


class Backbone(nn.Module):
    """A sequential CNN whose intermediate activations can be read by name.

    ``forward(images)`` returns the last feature map; ``forward(images, taps=names)`` the
    named activations (the perceptual loss reads them). ``images`` are ``[N, 3, H, W]``
    in ``[0, 1]``; the backbone normalises them itself: ``normalisation="imagenet"``
    (ImageNet statistics, for VGG16 with any weights) or ``"centre"`` (to ``[-1, 1]``).
    ``weights_info`` holds the record of a weights file it was loaded from, if any.
    """

    def __init__(
        self,
        name: str,
        features: nn.Sequential,
        tap_index: Mapping[str, int],
        normalisation: str = "centre",
    ) -> None:
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}"
            )
        self.name = name
        self.features = features
        self.tap_index = dict(tap_index)
        self.normalisation = normalisation
        self.weights_info: dict[str, Any] | None = None
        imagenet = normalisation == "imagenet"
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else ((0.5,) * 3, (0.5,) * 3)
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
    name: str = "small",
    weights: str | None = None,
    *,
    width: int = 32,
    image_size: int | Sequence[int] | None = None,
    load: bool = True,
) -> Backbone:
    """Build a backbone by name and load ``weights`` (see the module docstring).

    ``weights=None`` means the backbone's default: ``imagenet`` for ``vgg16``, ``none``
    for ``small``. ``width`` is the first layer's channel count of ``small``.
    ``image_size`` (when given) must match the image size a weights file was made for.
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
    # VGG16 weights (ImageNet's, and ours: train.pretrain uses the same statistics) see
    # ImageNet-normalised images; the small CNN always sees images centred to [-1, 1].
    normalisation = "imagenet" if name == "vgg16" and weights != "none" else "centre"
    backbone = Backbone(name, features, taps, normalisation)
    if load and weights != "none":
        state, info = read_weights(weights)
        if info is not None:
            check_weights_fit(info, backbone, width, image_size, weights)
            backbone.weights_info = info
        load_backbone_weights(backbone, state)
    return backbone


def default_weights(
    backbone: str,
    dataset: str | None = None,
    image_size: int | Sequence[int] | None = None,
    width: int = 32,
) -> str:
    """``imagenet`` for ``vgg16`` (as in the paper). For ``small``: the visual system
    shipped for ``dataset`` at ``image_size`` and ``width`` (``<dataset>-supervised-<size>``,
    see :mod:`agents.zoo`) when there is one, otherwise ``none`` (train from scratch)."""
    if backbone == "vgg16":
        return "imagenet"
    if dataset is None or image_size is None:
        return "none"
    height, side = _pair(image_size)
    name = f"{dataset}-supervised-{height}"
    if height != side or name not in shipped():
        return "none"
    _, info = read_weights(name)
    return name if info is not None and info.get("width") == width else "none"


def read_weights(spec: str) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The state dict for ``spec`` (``imagenet``, ``stylized:PATH_OR_URL``, a file or URL),
    and the record of a sketchenv weights file (None for other state dicts): what made it,
    and under ``classifier`` the linear classifier's state dict (or None)."""
    state = read_state_dict(spec)
    if state.get("format") != WEIGHTS_FORMAT:
        return state, None
    if state.get("version") != WEIGHTS_VERSION:
        raise ValueError(
            f"weights file {spec!r} has version {state.get('version')}; this sketchenv reads "
            f"version {WEIGHTS_VERSION}: re-make it with python -m train.pretrain"
        )
    info = {k: v for k, v in state.items() if k != "features"}  # classifier included
    return state["features"], info


def download(url: str) -> Path:
    """The copy of ``url`` in torch hub's cache, downloaded first if missing. A hash in the
    file name (``name-<sha256 prefix>.ext``, as torchvision publishes) is checked."""
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        published = torch.hub.HASH_REGEX.search(file.name)
        torch.hub.download_url_to_file(url, str(file), published and published.group(1))
    return file


def read_state_dict(spec: str) -> dict[str, Any]:
    """Read the dict stored for ``spec``: ``imagenet``, ``stylized:PATH_OR_URL``, a file or URL."""
    if spec == "imagenet":
        weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
        try:
            return load_torch(download(weights.url), "ImageNet VGG16 weights")
        except (urllib.error.URLError, OSError) as err:
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise ConnectionError(
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
        try:
            path = download(spec)
        except OSError as err:  # URLError, refused, timed out
            raise ConnectionError(
                f"could not download the weights at {spec} ({getattr(err, 'reason', err)}): "
                "check the address and the network, or download the file and pass its path"
            ) from err
    else:
        path = resolve_weights(spec)
    if path is None:
        raise FileNotFoundError(
            f"weights file {spec!r} not found; --weights takes imagenet, stylized:PATH_OR_URL, "
            f"none, a shipped name ({', '.join(shipped()) or 'none shipped'}), or a "
            "state-dict file or URL"
        )
    state = load_torch(path, "weights file")
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {spec!r} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def save_weights(
    path: str | Path,
    backbone: Backbone,
    info: Mapping[str, Any],
    classifier: Mapping[str, Tensor] | None = None,
) -> None:
    """Write ``backbone``'s weights with ``info`` (what made them: method, dataset,
    image_size, width, epochs, seed, probe, ...) as a weights file, atomically."""
    payload = {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "backbone": backbone.name,
        "normalisation": backbone.normalisation,
        **info,
        "features": {k: v.detach().cpu() for k, v in backbone.features.state_dict().items()},
        "classifier": None if classifier is None else {k: v.cpu() for k, v in classifier.items()},
    }
    save_torch(path, payload)


def read_classifier(
    path: str, image_size: int | Sequence[int] | None = None
) -> tuple[Backbone, nn.Linear, dict[str, Any]]:
    """The backbone and linear classifier of a supervised weights file, and its record."""
    _, info = read_weights(path)
    if info is None:
        raise ValueError(f"{path} is not a weights file of python -m train.pretrain")
    classifier = info.get("classifier")
    if not classifier:
        raise ValueError(
            f"{path} holds no classifier (made by --method {info.get('method')}); "
            "a recogniser needs weights from python -m train.pretrain --method supervised"
        )
    width = info.get("width") or 32
    backbone = make_backbone(info["backbone"], path, width=width, image_size=image_size)
    linear = nn.Linear(classifier["weight"].shape[1], classifier["weight"].shape[0])
    linear.load_state_dict(classifier)
    return backbone, linear, info


def check_weights_fit(
    info: Mapping[str, Any],
    backbone: Backbone,
    width: int,
    image_size: int | Sequence[int] | None,
    spec: str,
) -> None:
    """Refuse a weights file made for another backbone, width, image size or normalisation."""
    wanted = {"backbone": backbone.name, "normalisation": backbone.normalisation}
    if backbone.name == "small":
        wanted["width"] = width
    if image_size is not None:
        wanted["image_size"] = list(_pair(image_size))
    found = {k: info.get(k) for k in wanted}
    if found != wanted:
        differences = ", ".join(
            f"{k} {found[k]} (here {wanted[k]})" for k in wanted if found[k] != wanted[k]
        )
        raise ValueError(
            f"weights file {spec!r} was made for {differences}: pass the matching "
            "--backbone / --backbone-width / --image-size, or make weights for this setting "
            "with python -m train.pretrain"
        )


def describe_weights(info: Mapping[str, Any]) -> str:
    """One line on what made a weights file, for logs."""
    probe = info.get("probe") or {}
    scores = ", ".join(f"{k} {v:.3f}" for k, v in probe.items() if isinstance(v, float))
    size = info.get("image_size") or ["?"]
    return (
        f"{info.get('method')} on {info.get('dataset')} at {'x'.join(map(str, dict.fromkeys(size)))} px, "
        f"{info.get('backbone')} width {info.get('width')}, {info.get('epochs')} epochs, "
        f"seed {info.get('seed')}" + (f" (validation {scores})" if scores else "")
    )


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


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
