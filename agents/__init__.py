"""Agents for the sketching game: backbones, the paper's sender and receiver, losses,
the self-play trainer (``fit``, with callbacks) and checkpoints.

Plug-in interface (any callables with these shapes train and play like the built-ins)::

    sender(images: Tensor[N, 3, H, W]) -> strokes: Tensor[N, n_lines, 4] in [-1, 1]
    receiver(sketches: Tensor[B, G, 3, H, W], candidates: Tensor[B, C, 3, H, W])
        -> scores: Tensor[B, G, C]
"""

from agents.backbones import BACKBONES, Backbone, make_backbone
from agents.callbacks import Callback, default_callbacks
from agents.checkpoint import CheckpointError, Run, load_run
from agents.config import SelfPlayConfig
from agents.losses import game_loss, perceptual_loss
from agents.models import Encoder, Receiver, Sender, build_agents
from agents.perceptual import make_perceptual_net
from agents.pretrain import PretrainConfig
from agents.recognise import Recogniser
from agents.selfplay import Trainer, fit, resume_config
from agents.trainer import evaluate, play, train_step

__all__ = [
    "BACKBONES",
    "Backbone",
    "Callback",
    "CheckpointError",
    "Encoder",
    "PretrainConfig",
    "Receiver",
    "Recogniser",
    "Run",
    "SelfPlayConfig",
    "Sender",
    "Trainer",
    "build_agents",
    "default_callbacks",
    "evaluate",
    "fit",
    "game_loss",
    "load_run",
    "make_backbone",
    "make_perceptual_net",
    "perceptual_loss",
    "play",
    "resume_config",
    "train_step",
]
