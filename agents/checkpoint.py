"""Self-play checkpoints: atomic writes, clear errors, and loading a run back.

A run directory written by ``python -m train.selfplay`` holds ``last.pt`` (the latest
state, for ``--resume``) and ``best.pt`` (the best validation communication rate). Each is
one ``torch.save`` dict::

    format, version      "sketchenv-selfplay", 1
    sha256               digest of everything else, checked on load (agents.files)
    config               SelfPlayConfig as a dict (resolved: nothing left to defaults)
    game                 settings of the game it was trained on (see ``game_settings``)
    sender, receiver     state dicts (with a shared encoder its weights appear in both)
    optimizer, scheduler, scaler, rng, progress, history, best   (for exact resume)

Load a trained pair with :func:`load_run`::

    run = load_run("runs/my-run", device="cpu")      # best.pt, else last.pt
    strokes = run.sender(images)                     # [N, 3, H, W] -> [N, n_lines, 4]
    scores = run.receiver(sketches, candidates)      # [B, G, 3, H, W], [B, C, 3, H, W]
    game = run.make_game("test")                     # same dataset/settings, another split
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agents.config import LEGACY_VALUES, SelfPlayConfig, config_from_dict
from agents.experiment import make_agents, make_game
from agents.files import CorruptFileError, load_torch, save_torch
from agents.models import Receiver, Sender
from sketchenv.game import SketchGame

FORMAT = "sketchenv-selfplay"
VERSION = 1
CHECKPOINT_NAMES = ("best.pt", "last.pt")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model it describes."""


def game_settings(game: SketchGame) -> dict[str, Any]:
    """What a policy or evaluator needs to rebuild the game the agents were trained on."""
    return {
        "game": game.game,
        "image_size": list(game.image_size),
        "n_distractors": game.n_distractors,
        "n_candidates": game.n_candidates,
        "n_lines": game.n_lines,
        "sigma2": game.sigma2,
        "kernel": game.kernel,
        "composite": game.composite,
        "invert": game.invert,
        "stroke_format": str(game.stroke_format),
        "n_classes": game.n_classes,
        "classes": [str(c) for c in getattr(game.dataset, "classes", range(game.n_classes))],
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically, with the SHA-256 of its content (see
    :mod:`agents.files`), so neither a kill during the write nor later damage goes unseen."""
    save_torch(path, {"format": FORMAT, "version": VERSION, **payload})


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint file from a file path or a run directory (``best.pt``, else ``last.pt``;
    ``which="last"``: ``last.pt`` only, the state a resume continues)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        names = CHECKPOINT_NAMES if which == "best" else ("last.pt",)
        for name in names:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"no checkpoint in {path}: expected {' or '.join(names)}")
    raise CheckpointError(f"checkpoint {str(path)!r} does not exist (give a run dir or a .pt file)")


def read_checkpoint(path: str | Path, which: str = "best") -> dict[str, Any]:
    """Read and check a checkpoint (file or run directory) onto the CPU."""
    file = find_checkpoint(path, which)
    try:
        payload = load_torch(file, "checkpoint")
    except CorruptFileError as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not a sketchenv self-play checkpoint (no format={FORMAT!r} entry); "
            "plain weight files go to --weights, not --resume"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{file} has checkpoint version {payload.get('version')}; this sketchenv reads "
            f"version {VERSION}"
        )
    missing = [k for k in ("config", "game", "sender", "receiver") if k not in payload]
    if missing:
        raise CheckpointError(f"{file} lacks {missing}: it is incomplete")
    payload["path"] = str(file)
    if isinstance(payload["config"], dict):  # a config saved before a setting existed
        payload["config"] = LEGACY_VALUES | payload["config"]
    return payload


def load_agent_weights(sender: Sender, receiver: Receiver, payload: dict[str, Any]) -> None:
    """Load the checkpoint's sender/receiver weights, explaining any mismatch."""
    for name, module in (("sender", sender), ("receiver", receiver)):
        try:
            module.load_state_dict(payload[name])
        except RuntimeError as err:
            raise CheckpointError(
                f"{payload.get('path', 'checkpoint')}: the {name} weights do not fit the model "
                f"its config describes (was it written by another version or edited?): {err}"
            ) from err


@dataclass
class Run:
    """A trained sender/receiver pair with everything needed to play more games."""

    config: SelfPlayConfig
    sender: Sender
    receiver: Receiver
    game: dict[str, Any]  # game_settings() of the training game
    path: str
    progress: dict[str, Any] = field(default_factory=dict)  # epoch, step, ...
    metrics: dict[str, Any] = field(default_factory=dict)  # last validation metrics

    def make_game(self, split: str = "test", *, game: str | None = None) -> SketchGame:
        """A game on ``split`` of the training dataset with the training settings
        (``game`` switches the variant, e.g. evaluate an ``original`` run on ``oo-same``)."""
        return make_game(self.config, split, game=game)


def load_run(
    path: str | Path, device: str | torch.device | None = None, which: str = "best"
) -> Run:
    """Rebuild a trained run from a run directory or checkpoint file, in eval mode on
    ``device`` (default CPU). No pretrained weights are read: the checkpoint has them all."""
    payload = read_checkpoint(path, which)
    try:
        config = config_from_dict(payload["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{payload['path']}: its config is not valid here: {err}") from err
    sender, receiver = make_agents(config, payload["game"]["image_size"], load_weights=False)
    load_agent_weights(sender, receiver, payload)
    device = torch.device(device or "cpu")
    sender.to(device).eval()
    receiver.to(device).eval()
    return Run(
        config=config,
        sender=sender,
        receiver=receiver,
        game=payload["game"],
        path=payload["path"],
        progress=payload.get("progress", {}),
        metrics=payload.get("metrics", {}),
    )
