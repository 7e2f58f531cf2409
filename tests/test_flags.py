"""train.flags: the command-line flags generated from the config dataclasses accept every
command the README shows and refuse unknown or mistyped values by name."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from agents.backbones import BACKBONES
from agents.config import SelfPlayConfig
from agents.losses import LOSSES
from agents.models import SCORES
from agents.pretrain import PretrainConfig
from sketchenv.game import GAMES
from train import pretrain, selfplay

README = Path(__file__).resolve().parents[1] / "README.md"
PARSERS = {"train.selfplay": selfplay.build_parser, "train.pretrain": pretrain.build_parser}


def readme_commands(module: str) -> list[list[str]]:
    """The arguments of every ``python -m MODULE ...`` (or ``torchrun ... -m MODULE``) line
    in the README's shell code blocks, continuation lines joined and comments dropped."""
    commands, fence = [], None
    for line in README.read_text().replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip("` ")
            continue
        if fence not in ("bash", "sh", "") or f"-m {module}" not in line:
            continue
        words = shlex.split(line, comments=True)
        start = words.index(module, words.index("-m")) + 1
        end = words.index("&&", start) if "&&" in words[start:] else len(words)
        commands.append(words[start:end])
    return commands


@pytest.mark.parametrize("module", list(PARSERS))
def test_every_command_in_the_readme_parses(module):
    commands = readme_commands(module)
    assert len(commands) >= 5  # the quick start, the sections' examples, torchrun
    for argv in commands:
        PARSERS[module]().parse_args(argv)


def test_the_readme_shows_torchrun_launches_that_torchrun_accepts():
    launches = [
        shlex.split(line, comments=True)
        for line in README.read_text().replace("\\\n", " ").splitlines()
        if line.startswith("torchrun ")
    ]
    parser = get_args_parser()  # torchrun's own
    options = [vars(parser.parse_args(words[1:])) for words in launches]
    assert {o["module"] for o in options} == {True}
    assert {o["training_script"] for o in options} == {"train.selfplay", "train.pretrain"}
    assert any(o["standalone"] for o in options)  # one machine
    assert any(o["rdzv_endpoint"] and o["nnodes"] != "1" for o in options)  # several


@pytest.mark.parametrize(("module", "config"), [("train.selfplay", SelfPlayConfig),
                                                ("train.pretrain", PretrainConfig)])  # fmt: skip
def test_every_config_field_is_a_flag_with_its_help(module, config):
    text = PARSERS[module]().format_help()
    for field in dataclasses.fields(config):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(field.metadata["help"].split()[:3]) in " ".join(text.split()), flag


def test_choices_come_from_the_modules_that_own_them():
    actions = {a.dest: a for a in selfplay.build_parser()._actions}
    assert tuple(actions["game"].choices) == GAMES
    assert tuple(actions["backbone"].choices) == BACKBONES
    assert tuple(actions["loss"].choices) == LOSSES
    assert tuple(actions["score"].choices) == SCORES


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    (["--game", "origin"], "argument --game: invalid choice: 'origin'"),
    (["--score", "l2"], "argument --score: invalid choice: 'l2'"),
    (["--learning-rate", "1e-3"], "unrecognized arguments: --learning-rate 1e-3"),
    (["--amp=yes"], "argument --amp/--no-amp: ignored explicit argument 'yes'"),
    (["--sender-hidden"], "argument --sender-hidden: expected at least one argument"),
    (["--feature-cache-mb", "big"], "argument --feature-cache-mb: invalid int value: 'big'"),
])  # fmt: skip
def test_mistyped_flags_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        selfplay.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_flags_reach_the_config_and_values_out_of_range_are_refused_by_name():
    config, _ = selfplay.resolve_config(
        ["--no-channels-last", "--cpu-bfloat16", "--feature-cache-mb", "0", "--sender-hidden",
         "64", "256", "--grad-clip", "0", "--output", "x"]
    )  # fmt: skip
    assert (config.channels_last, config.cpu_bfloat16, config.feature_cache_mb) == (False, True, 0)
    assert config.sender_hidden == [64, 256] and config.grad_clip == 0.0
    with pytest.raises(ValueError, match=r"feature_cache_mb must be >= 0 \(0 = off\)"):
        selfplay.resolve_config(["--feature-cache-mb", "-1"])
