"""The console scripts: ``sketchenv-<name>`` is ``python -m train.<name>`` (same flags)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from train.flags import run_command

COMMANDS = ("selfplay", "rl", "pretrain", "evaluate", "analyse", "experiments", "play", "serve")


def _command(name: str) -> Callable[[], None]:
    def run() -> None:
        module = importlib.import_module(f"train.{name}")  # each command's imports, on use
        run_command(module.main, f"sketchenv-{name}")

    run.__doc__ = f"sketchenv-{name}: python -m train.{name} under its installed name."
    return run


selfplay, rl, pretrain, evaluate, analyse, experiments, play, serve = map(_command, COMMANDS)
