"""Bad input, grouped by entry point: each gets a clear error that names the problem (and
the fix), never a raw traceback or a silently accepted value. Other modules test more
cases for their own entry point (the env's options and actions in test_env, strokes in test_game,
checkpoints in test_agents, weights files in test_pretrain, the kernel cache in
test_raster); this file holds the ones found by sweeping every entry point at once."""

from __future__ import annotations

import importlib
import pickle
import sys

import numpy as np
import pytest
import torch
from fakedata import write_cifar10
from PIL import Image

import sketchenv
from agents.config import config_from_dict
from sketchenv.datasets import cifar10, imagefolder
from sketchenv.datasets.common import read_image
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
        ({"perceptual_net": "foo"}, "unknown perceptual_net 'foo'"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_strokes_on_the_meta_device_are_refused():
    from sketchenv.raster import render_strokes

    with pytest.raises(ValueError, match="meta device, which holds no values"):
        render_strokes(torch.zeros(5, 4, device="meta"), 32)


def test_config_accepts_what_json_and_toml_give():
    config = config_from_dict({"lr": 1, "image_size": None, "perceptual_weights": [1, 2.5]})
    assert (config.lr, config.image_size, config.perceptual_weights) == (1, None, [1, 2.5])


# ----- datasets ---------------------------------------------------------------------------
def test_a_garbage_cifar_batch_is_named(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR python batch"):
        cifar10.load("train", root=str(tmp_path))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("meta", "has no 'label_names': it is not the CIFAR-10 class list"),
        ("labels", "9 labels for 20 images"),
        ("floats", "'data' is float64 of shape"),
    ],
)
def test_a_cifar_batch_with_the_wrong_content_is_named(damage, message, tmp_path):
    write_cifar10(tmp_path, train_per_class=1)
    folder = tmp_path / "cifar-10-batches-py"
    if damage == "meta":
        (folder / "batches.meta").write_bytes(pickle.dumps({"names": ["a"]}, protocol=2))
    else:
        with open(folder / "test_batch", "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        if damage == "labels":
            batch["labels"] = batch["labels"][:9]
        else:
            batch["data"] = batch["data"].astype(np.float64)
        (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=message):
        cifar10.load("test", root=str(tmp_path))


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": RunsCode()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"refers to __builtin__\.print, not numpy data"):
        cifar10.load("test", root=str(tmp_path))


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_corrupt_image_is_named_with_its_path(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(5):
            pixels = np.full((8, 8, 3), 40 * i, np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / c / f"{i}.png")
    broken = tmp_path / "train" / "b" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])
    images = imagefolder.load(tmp_path, "train", image_size=8)
    with pytest.raises(ValueError, match=r"cannot read image .*b/3\.png .*truncated"):
        images[images.paths.index(str(broken))]


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path):
    levels = (np.arange(64).reshape(8, 8) * 1024).astype(np.uint16)  # 0 ... 64512
    Image.fromarray(levels).save(tmp_path / "deep.png")
    pixels = read_image(tmp_path / "deep.png")
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.uint8
    expected = torch.from_numpy(np.round(levels / 257).astype(np.uint8))
    assert torch.equal(pixels[0], expected) and torch.equal(pixels[2], expected)


def test_object_games_on_one_class_and_bad_seeds_are_explained(tmp_path):
    (tmp_path / "only").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(tmp_path / "only" / f"{i}.png")
    with pytest.raises(ValueError, match="oo-same needs at least 2 classes"):
        sketchenv.parallel_env(game="oo-same", dataset=imagefolder.load(tmp_path, "train"))
    with pytest.raises(TypeError, match="imagefolder: seed must be an integer, got 'x'"):
        imagefolder.load(tmp_path, "train", seed="x")


def test_an_image_too_small_to_hold_a_picture_is_named(tmp_path):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match=r"dot\.png is 1x1 px, too small"):
        read_image(tmp_path / "dot.png")


def test_images_too_small_to_draw_on_are_refused_when_the_env_is_built():
    dots = [(torch.rand(3, 1, 1), i % 2) for i in range(10)]  # a Dataset of 1x1 images
    with pytest.raises(ValueError, match="images are 1x1 px, too small to draw on"):
        sketchenv.parallel_env(dataset=dots, n_distractors=1)


def test_a_game_too_big_for_memory_is_refused_up_front():
    with pytest.raises(ValueError, match=r"image_size 20000 needs about 903\.0 GiB .* 101 images"):
        sketchenv.parallel_env(image_size=20000)


# ----- the commands: one line on stderr, exit status 2, no traceback ----------------------
# (run in-process through the same run_command as ``python -m``; test_evaluate runs one
# for real in a subprocess)
@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["train.selfplay", "--game", "original", "--epochs", "0"], "epochs must be >= 1"),
        (["train.selfplay", "--resume", "/nonexistent/run"], "does not exist"),
        (["train.selfplay", "--n-distractors", "3", "--batch-size", "3"], "less than one block"),
        (["train.selfplay", "--image-size", "30000"], "images at once"),
        (["train.selfplay", "--device", "tpu"], "'tpu' is not a device"),
        (["train.selfplay", "--device", "meta"], "sketchenv runs on cpu or cuda"),
        (["train.selfplay", "--backbone-width", "0"], "backbone_width must be >= 1"),
        (["train.selfplay", "--lr", "inf"], "lr must be a finite number > 0"),
        (["train.selfplay", "--seed", "-1"], "seed must be >= 0"),
        (["train.selfplay", "--perceptual-weights", "-1", "1", "1", "1"], "finite numbers >= 0"),
        (["train.pretrain", "--lr", "nan"], "lr must be a finite number > 0"),
        (["train.pretrain", "--seed", "-3"], "seed must be >= 0"),
        (["train.experiments", "table1", "--eval-games", "0"], "--eval-games must be >= 1"),
        (["train.play", "--seed", "-1", "--receiver", "random"], "--seed must be >= 0"),
        (["train.selfplay", "--output", "a-file"], "--output a-file is a file, not a folder"),
        (["train.pretrain", "--output", "a-file"], "--output a-file is a file, not a folder"),
        (["train.selfplay", "--output", "/proc/sketchenv-run"], "cannot be created"),
        (["train.selfplay", "--weights", "http://127.0.0.1:9/w.pt"], "127.0.0.1:9/w.pt"),
        (["train.evaluate", "/nonexistent/run"], "does not exist"),
        (["train.pretrain", "--epochs", "0"], "epochs"),
        (["train.experiments", "table9"], "unknown table 'table9'"),
        (["train.play", "--report", "/nonexistent/study.db"], "study.db"),
    ],
)
def test_commands_print_one_line_errors(command, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached downloads
    with pytest.raises(SystemExit) as exit_info:
        run(command, monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # argparse's usage may come first
    assert err[-1].startswith(f"python -m {command[0]}: error: ") and message in err[-1], err
    assert not any(line.startswith("Traceback") for line in err)


def test_resume_needs_a_whole_last_checkpoint(tmp_path, monkeypatch, capsys):
    from agents.checkpoint import read_checkpoint, save_checkpoint

    args = ["--n-distractors", "3", "--batch-size", "8", "--lines", "2", "--epochs", "1"]
    args += ["--val-games", "8", "--max-steps", "1", "--output", str(tmp_path / "run")]
    importlib.import_module("train.selfplay").main(args)
    payload = read_checkpoint(tmp_path / "run", which="last")
    del payload["rng"]
    save_checkpoint(tmp_path / "run" / "last.pt", payload)
    with pytest.raises(ValueError, match=r"lacks \['rng'\]: it cannot be resumed"):
        importlib.import_module("train.selfplay").main(["--resume", str(tmp_path / "run")])
    (tmp_path / "run" / "last.pt").rename(tmp_path / "run" / "best.pt")  # best only: no resume
    with pytest.raises(ValueError, match=r"no checkpoint in .*: expected last\.pt"):
        importlib.import_module("train.selfplay").main(["--resume", str(tmp_path / "run")])


def test_a_finished_run_resumed_says_there_is_nothing_to_do(tmp_path, capsys):
    selfplay = importlib.import_module("train.selfplay")
    args = ["--n-distractors", "3", "--batch-size", "8", "--lines", "2", "--epochs", "1"]
    selfplay.main([*args, "--val-games", "8", "--max-steps", "1", "--output", str(tmp_path)])
    selfplay.main(["--resume", str(tmp_path), "--max-steps", "1"])
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('runs = "r1"\n', "runs must be tables, one \\[runs.<run>\\] per run"),
        ('[runs.r1]\npaper = "high"\n', "paper must be a number"),
    ],
)
def test_bad_experiment_tables_are_explained(table, message, tmp_path):
    from train import experiments

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "table.toml").write_text(table)
    (tmp_path / "t" / "r1.toml").write_text('game = "original"\n')
    with pytest.raises(ValueError, match=message):
        experiments.load_table("t", tmp_path)
    assert "no tables in" in experiments.describe_tables(tmp_path / "t")


def test_debug_keeps_the_traceback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        run(["train.evaluate", "/nonexistent/run", "--debug"], monkeypatch)


def run(command: list[str], monkeypatch) -> None:
    """``python -m command...`` in this process."""
    module = importlib.import_module(command[0])
    monkeypatch.setattr(sys, "argv", command)
    run_command(module.main, f"python -m {command[0]}")
