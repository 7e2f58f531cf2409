"""agents.selfplay.fit and agents.callbacks: the hooks fire in their documented order, a
user's callback can stop training (then the run is validated and saved as for
--max-steps), and fit from Python trains what the command line trains."""

from __future__ import annotations

import pytest
import torch
from test_selfplay import folder, tiny_args, weights  # noqa: F401 (folder is a fixture)

from agents import Callback, Trainer, default_callbacks, fit
from agents.checkpoint import read_checkpoint
from train import selfplay

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(Callback):
    """Writes down each hook as it fires, with the trainer's step."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __getattribute__(self, name: str):
        if name.startswith("on_"):
            return lambda trainer, *args: self.calls.append((name, trainer.step))
        return super().__getattribute__(name)


class EarlyStop(Callback):
    """The kind of callback a user writes: stop once the step count reaches ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, stats) -> None:
        assert {"loss/total", "comm_rate", "grad_norm"} <= stats.keys()
        if trainer.step >= self.at:
            trainer.stop("early stop")


def config_of(folder, out, *extra):  # noqa: F811
    config, _ = selfplay.resolve_config(tiny_args(folder, out, *extra))
    return config


def test_hooks_fire_in_order(folder, tmp_path):  # noqa: F811
    recorder = Recorder()
    config = config_of(folder, tmp_path / "run")
    fit(config, callbacks=[*default_callbacks(config), recorder])
    epoch = [("on_epoch_start", s) for s in (0, 3)]
    steps = [[("on_step_end", s) for s in range(first, first + 3)] for first in (1, 4)]
    assert recorder.calls == [
        ("on_fit_start", 0),
        epoch[0], *steps[0], ("on_validation_end", 3), ("on_epoch_end", 3),
        epoch[1], *steps[1], ("on_validation_end", 6), ("on_epoch_end", 6),
        ("on_fit_end", 6),
    ]  # fmt: skip


def test_a_users_callback_stops_training_and_the_run_is_saved(folder, tmp_path):  # noqa: F811
    config = config_of(folder, tmp_path / "run")
    trainer = Trainer(config, callbacks=[*default_callbacks(config), EarlyStop(at=2)])
    metrics = trainer.fit()
    assert trainer.stop_reason == "early stop" and trainer.step == 2
    assert [row["step"] for row in trainer.history] == [2]  # validated where it stopped
    assert metrics["games"] == 8 and 0 <= metrics["comm_rate"] <= 1
    assert read_checkpoint(tmp_path / "run", which="last")["progress"]["step"] == 2
    # Without the default callbacks nothing is written or shown, and the config's own
    # stopping rules still apply: a notebook's loop over runs.
    quiet = Trainer(config.replace(output=str(tmp_path / "quiet"), max_steps=1), callbacks=[])
    quiet.fit()
    assert (quiet.step, quiet.stop_reason) == (1, "max_steps")
    assert not (tmp_path / "quiet").exists()


def test_fit_from_python_trains_what_the_command_line_trains(folder, tmp_path):  # noqa: F811
    selfplay.main(tiny_args(folder, tmp_path / "cli"))
    metrics = fit(config_of(folder, tmp_path / "python"))
    assert metrics == read_checkpoint(tmp_path / "cli", which="last")["metrics"]
    cli, python = weights(tmp_path / "cli"), weights(tmp_path / "python")
    assert all(torch.equal(cli[k], python[k]) for k in cli)
