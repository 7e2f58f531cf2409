"""The paper's agents: an encoder (backbone + linear projection), a sender and a receiver.

Both agents follow the plug-in interface of ``docs/architecture.md``::

    sender(images: [N, 3, H, W]) -> strokes: [N, n_lines, 4] in [-1, 1]
    receiver(sketches: [B, G, 3, H, W], candidates: [B, C, 3, H, W]) -> scores: [B, G, C]

They also expose their parts (``encoder``, ``Sender.decode``, ``Receiver.embed`` and
``Receiver.score``) so the trainer can encode each block's candidates once and, with a
shared encoder, reuse those features as the sender's input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from agents.backbones import Backbone, make_backbone
from sketchenv.strokes import StrokeFormat

SCORES = ("dot", "cosine")


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with ReLU between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """The visual system: a backbone, flattened, then a trainable linear projection."""

    def __init__(self, backbone: Backbone, image_size: tuple[int, int], latent_size: int = 64):
        super().__init__()
        self.backbone = backbone
        self.image_size = tuple(image_size)
        channels, height, width = backbone.output_shape(self.image_size)
        self.projection = nn.Linear(channels * height * width, latent_size)
        self.latent_size = latent_size

    def forward(self, images: Tensor) -> Tensor:
        """``[..., 3, H, W]`` images in ``[0, 1]`` -> ``[..., latent_size]``."""
        if images.dim() < 4 or tuple(images.shape[-3:]) != (3, *self.image_size):
            raise ValueError(
                f"encoder expects images [..., 3, {self.image_size[0]}, {self.image_size[1]}], "
                f"got {tuple(images.shape)}; build the agents with the game's image size"
            )
        lead = images.shape[:-3]
        return self.project(self.backbone(images.reshape(-1, *images.shape[-3:])), lead)

    def project(self, maps: Tensor, lead: Sequence[int]) -> Tensor:
        """The backbone's final maps ``[N, C, h, w]`` -> latents ``[*lead, latent_size]``
        (for a trainer that has the maps already, e.g. from a feature cache)."""
        return self.projection(maps.flatten(1)).view(*lead, -1)


def quadratic_segments(controls: Tensor, k: int) -> Tensor:
    """Quadratic Bézier curves ``[..., n, 3, 2]`` (start, control, end points) -> ``[..., n * k,
    4]``: each curve as the ``k`` chords between its points at t = 0, 1/k, ..., 1.

    The chords stay within |P0 - 2 P1 + P2| / (4 k²) of the curve (its second derivative
    is constant), and they end inside [-1, 1] when the control points do (convex hull)."""
    t = torch.linspace(0, 1, k + 1, device=controls.device, dtype=controls.dtype).view(-1, 1)
    start, control, end = (controls[..., i, None, :] for i in range(3))
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end  # [..., n, k+1, 2]
    chords = torch.cat([points[..., :-1, :], points[..., 1:, :]], dim=-1)  # [..., n, k, 4]
    return chords.flatten(-3, -2)


def squash_strokes(raw: Tensor, stroke_format: StrokeFormat) -> Tensor:
    """Unbounded outputs ``[..., n, size]`` -> strokes within the format's bounds:
    coordinates tanh; width 4^tanh (in [1/4, 4], 1 at 0); opacity sigmoid(x + 2) and colour
    sigmoid(x - 2), so that a fresh sender's strokes start drawn (0.88) and dark (0.12)."""
    squash = {
        "width": lambda x: 4.0 ** torch.tanh(x),
        "opacity": lambda x: torch.sigmoid(x + 2),
        **dict.fromkeys("rgb", lambda x: torch.sigmoid(x - 2)),
    }
    columns = [
        squash.get(name, torch.tanh)(raw[..., j]) for j, name in enumerate(stroke_format.columns)
    ]
    return torch.stack(columns, dim=-1)


class Sender(nn.Module):
    """Image -> strokes: encoder, MLP (paper: 64 -> 64 -> 256 -> n_lines*4), tanh.

    The MLP gives ``n_lines`` strokes of ``stroke_format`` (lines by default; curves,
    width, opacity and colour squashed into their ranges by :func:`squash_strokes`). With
    ``curve_segments`` = k > 1 (lines only) it gives ``n_lines / k`` quadratic Bézier
    curves instead, each drawn as k chained lines (:func:`quadratic_segments`): the game
    still receives ``n_lines`` lines, bent into smooth curves."""

    def __init__(
        self,
        encoder: Encoder,
        n_lines: int = 20,
        hidden: Sequence[int] = (64, 256),
        curve_segments: int = 1,
        stroke_format: StrokeFormat | str = "line",
    ):
        super().__init__()
        stroke_format = StrokeFormat.parse(stroke_format)
        if curve_segments < 1 or n_lines % curve_segments:
            raise ValueError(
                f"n_lines ({n_lines}) must be a multiple of curve_segments ({curve_segments}):"
                " the sender draws n_lines / curve_segments curves"
            )
        if curve_segments > 1 and str(stroke_format) != "line":
            raise ValueError(
                "curve_segments bends plain lines; draw curves with stroke_format='quadratic'"
            )
        self.encoder = encoder
        self.n_lines, self.curve_segments = n_lines, curve_segments
        self.stroke_format = stroke_format
        outputs = (
            n_lines * stroke_format.size if curve_segments == 1 else n_lines // curve_segments * 6
        )
        self.decoder = mlp([encoder.latent_size, *hidden, outputs])

    def decode(self, latent: Tensor) -> Tensor:
        """``[..., latent]`` -> strokes ``[..., n_lines, stroke_format.size]``."""
        out, lead = self.decoder(latent), latent.shape[:-1]
        if self.curve_segments > 1:
            return quadratic_segments(torch.tanh(out).view(*lead, -1, 3, 2), self.curve_segments)
        if str(self.stroke_format) == "line":  # the paper's sender, bit for bit
            return torch.tanh(out).view(*lead, self.n_lines, 4)
        return squash_strokes(out.view(*lead, self.n_lines, -1), self.stroke_format)

    def forward(self, images: Tensor) -> Tensor:
        return self.decode(self.encoder(images))


class Receiver(nn.Module):
    """Scores candidates against a sketch: ``score_j = <g(f(sketch)), g(f(candidate_j))>``.

    ``f`` is the encoder, ``g`` an MLP (paper: 64 -> 64 -> 64). With ``score="cosine"``
    both embeddings are unit-normalised and the inner product is multiplied by a learnable
    scale (initialised to ``scale``, kept in ``[1, 100]``), which keeps early training
    stable; ``score="dot"`` is the paper's plain inner product.
    """

    def __init__(
        self,
        encoder: Encoder,
        hidden: Sequence[int] = (64,),
        out_size: int = 64,
        score: str = "dot",
        scale: float = 10.0,
    ) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")
        self.encoder = encoder
        self.head = mlp([encoder.latent_size, *hidden, out_size])
        self.score_kind = score
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale))) if score == "cosine" else None

    def embed(self, latent: Tensor) -> Tensor:
        """Encoder features -> embeddings used for scoring."""
        out = self.head(latent)
        return nn.functional.normalize(out, dim=-1) if self.score_kind == "cosine" else out

    def score(self, sketch_embedding: Tensor, candidate_embedding: Tensor) -> Tensor:
        """``[B, G, D]`` x ``[B, C, D]`` -> scores ``[B, G, C]``."""
        scores = sketch_embedding @ candidate_embedding.transpose(-1, -2)
        if self.log_scale is not None:
            scores = scores * self.log_scale.clamp(0.0, math.log(100.0)).exp()
        return scores

    def forward(self, sketches: Tensor, candidates: Tensor) -> Tensor:
        return self.score(self.embed(self.encoder(sketches)), self.embed(self.encoder(candidates)))


def build_agents(
    *,
    image_size: tuple[int, int],
    n_lines: int = 20,
    curve_segments: int = 1,
    stroke_format: StrokeFormat | str = "line",
    backbone: str = "small",
    weights: str | None = None,
    backbone_width: int = 32,
    freeze_backbone: bool = False,
    separate_encoders: bool = False,
    latent_size: int = 64,
    sender_hidden: Sequence[int] = (64, 256),
    receiver_hidden: Sequence[int] = (64,),
    receiver_out: int = 64,
    score: str = "dot",
    score_scale: float = 10.0,
    load_weights: bool = True,
) -> tuple[Sender, Receiver]:
    """Build a sender and a receiver sharing one encoder (default) or with one each.

    ``load_weights=False`` skips reading the backbone weights (a checkpoint follows).
    """

    def encoder() -> Encoder:
        net = make_backbone(
            backbone, weights, width=backbone_width, image_size=image_size, load=load_weights
        )
        if freeze_backbone:
            net.requires_grad_(False)
        return Encoder(net, image_size, latent_size)

    sender_encoder = encoder()
    receiver_encoder = encoder() if separate_encoders else sender_encoder
    sender = Sender(sender_encoder, n_lines, sender_hidden, curve_segments, stroke_format)
    receiver = Receiver(receiver_encoder, receiver_hidden, receiver_out, score, score_scale)
    return sender, receiver
