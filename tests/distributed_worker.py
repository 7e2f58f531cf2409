"""A self-play (or pretraining) run for the distributed tests, started by torchrun.

    torchrun --nproc-per-node 2 tests/distributed_worker.py RECORD [--sigterm-at N] FLAGS...
    torchrun --nproc-per-node 2 tests/distributed_worker.py RECORD --pretrain FLAGS...

Trains like ``python -m train.selfplay FLAGS`` (``python -m train.pretrain FLAGS``) and, on
rank 0, writes to RECORD (a ``torch.save`` file) every step's global statistics and the
first step's gradients, as a user callback sees them; ``--sigterm-at N`` raises SIGTERM
on rank 0 only, during step N.
"""

from __future__ import annotations

import signal
import sys

import torch

from agents import distributed
from agents.callbacks import Callback, default_callbacks
from agents.pretrain import Pretraining
from agents.pretrain import default_callbacks as pretrain_callbacks
from agents.selfplay import Trainer
from train import pretrain
from train.selfplay import resolve_config


class Recorder(Callback):
    """Keeps each step's stats and the first step's gradients; saves them at the end."""

    def __init__(self, path: str, sigterm_at: int | None) -> None:
        self.path, self.sigterm_at = path, sigterm_at
        self.record: dict = {"stats": [], "grads": None}

    def on_step_end(self, trainer, stats) -> None:
        self.record["stats"].append(dict(stats))
        if self.record["grads"] is None:
            params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
            self.record["grads"] = [p.grad.clone() for p in params if p.grad is not None]
        if trainer.step == self.sigterm_at and trainer.processes.main:
            signal.raise_signal(signal.SIGTERM)

    def on_fit_end(self, trainer, metrics) -> None:
        if trainer.processes.main:
            torch.save(self.record | {"metrics": metrics}, self.path)


def main(argv: list[str]) -> None:
    path, argv = argv[0], argv[1:]
    sigterm_at = None
    if argv[:1] == ["--sigterm-at"]:
        sigterm_at, argv = int(argv[1]), argv[2:]
    pretraining = argv[:1] == ["--pretrain"]
    if pretraining:
        config, resumed, _ = pretrain.resolve(argv[1:])
        processes, _ = distributed.start(config.device)
        callbacks = pretrain_callbacks(config, processes.main)
    else:
        config, resumed = resolve_config(argv)
        processes, _ = distributed.start(config.device)
        callbacks = default_callbacks(config, processes.main)
    callbacks.append(Recorder(path, sigterm_at))
    (Pretraining if pretraining else Trainer)(config, callbacks, resumed).fit()
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
