"""Bad input, grouped by entry point: each gets a clear error that names the problem (and
the fix), never a raw traceback or a silently accepted value. Other modules test more
cases for their own entry point (the env's options and actions in test_env, strokes in test_game,
checkpoints in test_agents, weights files in test_pretrain, the kernel cache in
test_raster); this file holds the ones found by sweeping every entry point at once."""

from __future__ import annotations

import importlib
import sys

import pytest

from agents.config import config_from_dict
from train.flags import run_command


# ----- configuration files and dicts (train.selfplay --config, train.experiments) ---------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": "fast"}, "'lr' must be a number, got 'fast'"),
        ({"seed": "x"}, "'seed' must be an integer"),
        ({"sender_hidden": 5}, "'sender_hidden' must be a list of integers, got 5"),
        ({"sender_hidden": [1.5]}, "'sender_hidden' must be a list of integers"),
        ({"epochs": 1.5}, "'epochs' must be an integer, got 1.5"),
        ({"batch_size": True}, "'batch_size' must be an integer, got True"),
        ({"amp": "no"}, "'amp' must be a boolean"),
        ({"perceptual_weights": "a"}, "'perceptual_weights' must be a list of numbers or null"),
        ({"image_size": "64"}, "'image_size' must be an integer or null"),
        ({"learning_rate": 1e-3}, r"unknown config key\(s\) \['learning_rate'\]"),
        ({"epochs": 0}, "epochs must be >= 1"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_config_accepts_what_json_and_toml_give():
    config = config_from_dict({"lr": 1, "image_size": None, "perceptual_weights": [1, 2.5]})
    assert (config.lr, config.image_size, config.perceptual_weights) == (1, None, [1, 2.5])


# ----- the commands: one line on stderr, exit status 2, no traceback ----------------------
# (run in-process through the same run_command as ``python -m``; test_evaluate runs one
# for real in a subprocess)
@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["train.selfplay", "--game", "original", "--epochs", "0"], "epochs must be >= 1"),
        (["train.selfplay", "--resume", "/nonexistent/run"], "does not exist"),
        (["train.selfplay", "--n-distractors", "3", "--batch-size", "3"], "less than one block"),
        (["train.evaluate", "/nonexistent/run"], "does not exist"),
        (["train.pretrain", "--epochs", "0"], "epochs"),
        (["train.experiments", "table9"], "unknown table 'table9'"),
        (["train.play", "--report", "/nonexistent/study.db"], "study.db"),
    ],
)
def test_commands_print_one_line_errors(command, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(command, monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m {command[0]}: error: "), err
    assert message in err[0]


def test_debug_keeps_the_traceback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        run(["train.evaluate", "/nonexistent/run", "--debug"], monkeypatch)


def run(command: list[str], monkeypatch) -> None:
    """``python -m command...`` in this process."""
    module = importlib.import_module(command[0])
    monkeypatch.setattr(sys, "argv", command)
    run_command(module.main, f"python -m {command[0]}")
