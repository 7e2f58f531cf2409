"""Turn a :class:`~agents.config.SelfPlayConfig` into the objects of a run.

Shared by ``train.selfplay`` (to start a run) and :mod:`agents.checkpoint` (to rebuild a
saved run), so both build games and agents the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from agents.backbones import default_weights
from agents.config import SelfPlayConfig, default_sigma2, stroke_format_of
from agents.models import Receiver, Sender, build_agents
from sketchenv.datasets import make_dataset
from sketchenv.game import SketchGame

SMALL_IMAGE_SIZE = 32  # the small backbone's default: fast on a CPU, enough for shapes


def make_split(config: Any, split: str = "train") -> Dataset:
    """The ``split`` of the dataset a self-play or pretraining config names, at its image
    size (unset: 32 px for the small backbone, the dataset's own for ``vgg16``), with its
    seed (which fixes generated images and held-out splits)."""
    image_size = config.image_size
    if image_size is None and config.backbone == "small":
        image_size = SMALL_IMAGE_SIZE
    return make_dataset(
        config.dataset,
        split,
        image_size=image_size,
        root=config.data_root,
        download=config.download,
        seed=config.seed,
    )


def make_game(
    config: SelfPlayConfig, split: str = "train", *, game: str | None = None
) -> SketchGame:
    """The config's dataset split wrapped in a :class:`SketchGame` (``game`` overrides the
    variant, e.g. to evaluate a checkpoint on another game).

    Unset ``image_size``: 32 px for the small backbone, the dataset's own for ``vgg16``.
    Unset ``sigma2``: :func:`~agents.config.default_sigma2` of the image size.
    """
    dataset = make_split(config, split)
    sigma2 = config.sigma2
    if sigma2 is None:
        side = getattr(dataset, "image_size", None)  # known without making an image
        sigma2 = default_sigma2(side if isinstance(side, int) else min(dataset[0][0].shape[-2:]))
    return SketchGame(
        dataset,
        game or config.game,
        n_distractors=config.n_distractors,
        n_lines=config.lines,
        sigma2=sigma2,
        invert=config.invert,
        stroke_format=stroke_format_of(config),
        seed=config.seed,
    )


def fill_defaults(config: SelfPlayConfig, game: SketchGame) -> SelfPlayConfig:
    """``config`` with every default that depends on the data filled in, as saved with a
    run: the image size and stroke width of ``game``, the backbone's weights (the shipped
    visual system for this dataset and size, if any) and whether they are frozen
    (pretrained weights are; a backbone trained from scratch is not)."""
    height, width = game.image_size
    weights = config.weights or default_weights(
        config.backbone, config.dataset, game.image_size, config.backbone_width
    )
    freeze = config.freeze_backbone
    return config.replace(
        image_size=height if height == width else config.image_size,
        sigma2=game.sigma2,
        weights=weights,
        freeze_backbone=weights != "none" if freeze is None else freeze,
    )


def make_agents(
    config: SelfPlayConfig, image_size: Sequence[int], *, load_weights: bool = True
) -> tuple[Sender, Receiver]:
    """The sender and receiver the config describes, for images of ``image_size`` (H, W).

    ``load_weights=False`` skips reading pretrained backbone weights (use it before
    loading a checkpoint, which holds every weight anyway).
    """
    sender, receiver = build_agents(
        image_size=(int(image_size[0]), int(image_size[1])),
        n_lines=config.lines,
        curve_segments=config.curve_segments,
        stroke_format=stroke_format_of(config),
        backbone=config.backbone,
        weights=config.weights,
        backbone_width=config.backbone_width,
        freeze_backbone=bool(config.freeze_backbone),
        separate_encoders=config.separate_encoders,
        latent_size=config.latent_size,
        sender_hidden=config.sender_hidden,
        receiver_hidden=config.receiver_hidden,
        receiver_out=config.receiver_out,
        score=config.score,
        score_scale=config.score_scale,
        load_weights=load_weights,
    )
    if config.channels_last:  # convolutions then run in NHWC (inputs need no conversion)
        sender.to(memory_format=torch.channels_last)
        receiver.to(memory_format=torch.channels_last)
    return sender, receiver
