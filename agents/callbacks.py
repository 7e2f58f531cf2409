"""What a self-play run does besides training, as small callbacks outside the loop.

A :class:`Callback` overrides the hooks it needs; :class:`~agents.selfplay.Trainer` calls
them in this order::

    on_fit_start
      on_epoch_start, on_step_end (after every step) ..., on_validation_end, on_epoch_end
      ...
    on_interrupt (only when a signal stops an epoch before its end), on_fit_end

Every hook gets the trainer (its ``config``, ``step``, ``epoch``, ``history``, models and
optimiser); any hook may call ``trainer.stop(reason)`` to end training after the current
step (the epoch is then validated and saved, as for ``--max-steps``). The built-in ones
below write the run folder; :func:`default_callbacks` lists what ``python -m
train.selfplay`` uses, and :func:`stopping_rules` the config's ``--max-steps`` and
``--time-budget``, which a trainer always puts first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.checkpoint import save_checkpoint
from agents.files import make_folder, remove_stray_temporaries, write_atomic
from agents.runs import sketch_grid, write_csv, write_png

if TYPE_CHECKING:
    from agents.selfplay import Trainer
    from agents.trainer import Outcome
    from sketchenv.game import GameBatch

CSV_FIELDS = (
    "epoch", "step", "games", "seconds", "lr", "train_loss", "train_comm_rate",
    "train_class_rate", "val_loss", "val_comm_rate", "val_class_rate",
)  # fmt: skip


class Callback:
    """Hooks of :meth:`Trainer.fit <agents.selfplay.Trainer.fit>`; each does nothing here."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (also of a resumed run)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before an epoch's first step (``trainer.batch`` > 0 when resumed mid-epoch)."""

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        """After every step: ``stats`` are its losses and rates over all processes' games."""

    def on_validation_end(
        self, trainer: Trainer, row: dict[str, Any], first: tuple[GameBatch, Outcome]
    ) -> None:
        """After a validation pass: ``row`` is the metrics row just added to
        ``trainer.history``; ``first`` the first validation batch and what it produced."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After an epoch (or a budget stop) was validated and ``trainer.best`` updated."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """A signal stopped training mid-epoch (nothing is validated): save what is needed."""

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After training, with the last validation metrics (also after an exception)."""


class RunFolder(Callback):
    """Makes the run folder and writes ``config.json`` (the resolved config, the game and
    derived figures); refuses to start a new run over an old one."""

    def on_fit_start(self, trainer: Trainer) -> None:
        out = trainer.out
        if trainer.resumed is None and (out / "last.pt").exists():
            raise FileExistsError(
                f"{out} already holds a run; continue it with --resume {out} or pick another "
                "--output"
            )
        make_folder(out)
        (out / "grids").mkdir(exist_ok=True)
        for folder in (out, out / "grids"):  # of writes killed mid-way (real files are whole)
            remove_stray_temporaries(folder)
        info = {"config": trainer.config.to_dict(), "game": trainer.settings}
        write_atomic(out / "config.json", json.dumps(info | {"derived": trainer.derived}, indent=2))


class Checkpoints(Callback):
    """``trainer.state()`` to ``last.pt`` after every epoch and on interrupt, and with
    ``best`` to ``best.pt`` when validation improves (``trainer.best``)."""

    def __init__(self, best: bool = True) -> None:
        self.best = best

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any] | None) -> None:
        save_checkpoint(trainer.out / "last.pt", trainer.state())
        if self.best and trainer.best["step"] == trainer.step:
            save_checkpoint(trainer.out / "best.pt", trainer.state())

    def on_interrupt(self, trainer: Trainer) -> None:
        save_checkpoint(trainer.out / "last.pt", trainer.state())


class MetricsCSV(Callback):
    """``metrics.csv``: one row per validation pass (the whole history, rewritten atomically)."""

    def __init__(self, fields: Sequence[str] = CSV_FIELDS) -> None:
        self.fields = fields

    def on_validation_end(self, trainer: Trainer, row: dict, first: tuple | None) -> None:
        write_csv(trainer.out / "metrics.csv", trainer.history, self.fields)


class SketchGrids(Callback):
    """``grids/step<N>.png``: the first validation games' images beside their sketches."""

    def on_validation_end(self, trainer: Trainer, row: dict, first: tuple) -> None:
        batch, outcome = first
        grid = sketch_grid(batch.sender_images.flatten(0, 1), outcome.sketches.flatten(0, 1))
        write_png(trainer.out / "grids" / f"step{trainer.step:07d}.png", grid)


class TensorBoard(Callback):
    """TensorBoard logs in ``tb/``: training scalars every ``log_every`` steps, validation
    scalars and a sketch grid per pass; a resumed run drops the points past its checkpoint."""

    def __init__(self, log_every: int = 20) -> None:
        self.log_every = log_every
        self.writer: SummaryWriter | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        purge = trainer.step if trainer.resumed else None
        self.writer = SummaryWriter(str(trainer.out / "tb"), purge_step=purge)

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.step % self.log_every:
            return
        for key, value in stats.items():
            self.writer.add_scalar(key if "/" in key else f"train/{key}", value, trainer.step)
        self.writer.add_scalar("train/lr", trainer.scheduler.get_last_lr()[0], trainer.step)
        if trainer.receiver.log_scale is not None:
            scale = trainer.receiver.log_scale.exp().item()
            self.writer.add_scalar("train/score_scale", scale, trainer.step)

    def on_validation_end(self, trainer: Trainer, row: dict, first: tuple) -> None:
        batch, outcome = first
        grid = sketch_grid(batch.sender_images.flatten(0, 1), outcome.sketches.flatten(0, 1))
        self.writer.add_image("val/sketches", grid, trainer.step)
        for key in ("loss", "comm_rate", "class_rate"):
            self.writer.add_scalar(f"val/{key}", row[f"val_{key}"], trainer.step)

    def on_fit_end(self, trainer: Trainer, metrics: dict) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    """A progress bar per epoch (silent when the output is not a terminal) showing
    :meth:`postfix`, and where to resume when a signal stops training."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        """What the bar shows after a step."""
        return {}

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(
            total=trainer.steps_per_epoch,
            initial=trainer.batch,
            desc=f"epoch {trainer.epoch + 1}/{trainer.config.epochs}",
            disable=None,
            dynamic_ncols=True,
        )

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        self.bar.update()
        self.bar.set_postfix(self.postfix(stats))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any] | None) -> None:
        self.close()
        if trainer.stop_reason in ("SIGINT", "SIGTERM"):
            print(f"resume with --resume {trainer.out}", flush=True)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.close()
        print(
            f"stopped ({trainer.stop_reason}) at step {trainer.step}; resume with --resume "
            f"{trainer.out}",
            flush=True,
        )

    def on_fit_end(self, trainer: Trainer, metrics: dict) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar (before a line is printed under it)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Console(ProgressBar):
    """What was set up and where the run goes, a progress bar per epoch with the running
    communication rate, and one line per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.window: list[float] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        c = trainer.config
        for note in trainer.notes:  # what was set up: weights, feature cache
            print(note, flush=True)
        print(
            f"run dir {trainer.out} | device {trainer.device} | {trainer.processes.world} "
            f"process(es) | {trainer.steps_per_epoch} steps/epoch x {c.epochs} epochs"
            + (f" | resuming at step {trainer.step}" if trainer.resumed else ""),
            flush=True,
        )

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.window = []
        super().on_epoch_start(trainer)

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        self.window = [*self.window[-49:], stats["comm_rate"]]
        mean = sum(self.window) / len(self.window)
        return {"comm": f"{mean:.3f}", "loss": f"{stats['loss/total']:.3f}"}

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.close()
        print(
            f"epoch {trainer.epoch}/{trainer.config.epochs} step {trainer.step}: train comm "
            f"{row['train_comm_rate']:.3f} | val comm {row['val_comm_rate']:.3f} class "
            f"{row['val_class_rate']:.3f} | {row['seconds']:.0f}s"
            + (f" | stopped: {trainer.stop_reason}" if trainer.stop_reason else ""),
            flush=True,
        )
        super().on_epoch_end(trainer, row)


class MaxSteps(Callback):
    """Stop once ``trainer.step`` reaches ``steps`` (``--max-steps``; counts resumed steps)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_fit_start(self, trainer: Trainer) -> None:
        self.on_step_end(trainer, {})

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.step >= self.steps:
            trainer.stop("max_steps")


class TimeBudget(Callback):
    """Stop after ``seconds`` of this process (``--time-budget``), checked after each step,
    so every run makes at least one."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if time.monotonic() - trainer.start_time > self.seconds:
            trainer.stop("time_budget")


def stopping_rules(config: Any) -> list[Callback]:
    """The stops the config asks for (``max_steps``, ``time_budget``): a trainer puts them
    before its callbacks, whichever those are."""
    rules: list[Callback] = []
    if config.max_steps is not None:
        rules.append(MaxSteps(config.max_steps))
    if config.time_budget is not None:
        rules.append(TimeBudget(config.time_budget))
    return rules


def default_callbacks(config: Any, main_process: bool = True) -> list[Callback]:
    """What ``python -m train.selfplay`` writes and shows, on the main process only: the
    run folder, console, TensorBoard, metrics, grids and checkpoints."""
    if not main_process:
        return []
    return [
        RunFolder(),
        Console(),
        TensorBoard(config.log_every),
        MetricsCSV(),
        SketchGrids(),
        Checkpoints(),
    ]
