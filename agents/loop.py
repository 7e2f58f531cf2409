"""The training loop that self-play (:class:`agents.selfplay.Trainer`) and pretraining
(:class:`agents.pretrain.Pretraining`) share: epochs of steps from a saved position, the
callbacks of :mod:`agents.callbacks` around them, and stops that every ``torchrun``
process agrees on.

A subclass builds everything in its ``__init__`` (setting the attributes listed in
:class:`Loop`) and says what an epoch's batches are, what one step does and what ends an
epoch; :meth:`Loop.fit` then reads the same for both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from agents.distributed import Processes
from agents.runs import stop_on_signal


class Loop:
    """Epochs of steps, resumable at any step, with callbacks and agreed stops."""

    config: Any  # a dataclass with at least `epochs`
    processes: Processes
    device: torch.device
    out: Path
    callbacks: list  # of agents.callbacks.Callback
    resumed: dict[str, Any] | None  # the checkpoint continued, if any
    steps_per_epoch: int
    sums: dict[str, float]  # running sums of the epoch under way, of these stats
    history: list[dict[str, Any]]
    metrics: dict[str, float]  # the last validation's

    def __init__(self) -> None:
        self.start_time = time.monotonic()
        self.epoch, self.batch, self.step, self.n_steps = 0, 0, 0, 0
        self.stop_reason: str | None = None

    # ----- what a subclass gives ------------------------------------------------------------
    def epoch_batches(self) -> Iterable[Any]:
        """This process's batches of epoch ``self.epoch``, all of them (also when resumed)."""
        raise NotImplementedError

    def train_step(self, batch: Any, index: int) -> dict[str, float]:
        """One update on batch ``index``; returns its stats (over all processes)."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """After an epoch (or a budget stop): validate when due, call the epoch hooks."""
        raise NotImplementedError

    def begin(self) -> None:
        """After ``on_fit_start``, before the first step (nothing here)."""

    # ----- the loop ---------------------------------------------------------------------------
    def stop(self, reason: str = "callback") -> None:
        """End training after the current step (callbacks call this)."""
        self.stop_reason = self.stop_reason or reason

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def fit(self) -> dict[str, float]:
        """Train until ``config.epochs`` (or a stop); returns the last validation metrics."""
        c = self.config
        try:
            self.call("on_fit_start")
            self.begin()
            if (self.epoch >= c.epochs or self.stop_reason) and self.processes.main:
                print(
                    f"nothing to do: {self.out} is at step {self.step} (epoch {self.epoch}/"
                    f"{c.epochs}); raise --epochs (up to the schedule's) or --max-steps to "
                    "train further",
                    flush=True,
                )
            with stop_on_signal() as interrupted:
                while self.epoch < c.epochs and not self.stop_reason:
                    self._train_epoch(interrupted)
                    if self.stop_reason in ("SIGINT", "SIGTERM") and self.batch > 0:
                        self.call("on_interrupt")  # stopped mid-epoch: save at once
                        break
                    self.end_epoch()
        finally:
            self.call("on_fit_end", self.metrics)
        return self.metrics

    def _train_epoch(self, interrupted: dict) -> None:
        """The steps of one epoch from ``self.batch`` on, until its end or a stop."""
        self.call("on_epoch_start")
        for index, batch in enumerate(self.epoch_batches()):
            if index < self.batch:
                continue  # done before the resume
            stats = self.train_step(batch, index)
            self.step, self.batch, self.n_steps = self.step + 1, self.batch + 1, self.n_steps + 1
            for key in self.sums:
                self.sums[key] += stats[key]
            self.call("on_step_end", stats)
            reason = self.stop_reason or interrupted["signal"]
            self.stop_reason = self.processes.agree(reason, self.device)
            if self.stop_reason:
                break
        if self.batch >= self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0

    def epoch_means(self) -> dict[str, float]:
        """The means of the stats over the epoch's steps; the sums restart once the epoch
        is complete, so an epoch stopped by a budget and resumed keeps counting its steps."""
        means = {k: v / max(1, self.n_steps) for k, v in self.sums.items()}
        if self.batch == 0:
            self.sums, self.n_steps = dict.fromkeys(self.sums, 0.0), 0
        return means
