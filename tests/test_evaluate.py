"""train/evaluate.py: results, game log and grid of a tiny trained run, by seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_policies import make_tiny_run

from agents.backbones import make_backbone, save_weights
from agents.checkpoint import CheckpointError, load_run
from agents.trainer import evaluate as trainer_evaluate
from train.evaluate import main

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "tiny-selfplay"  # shared with test_policies
    return {
        "trained": make_tiny_run(root),
        "other": make_tiny_run(root, steps=1, extra=("--seed=1",)),
        "bigger": make_tiny_run(root, steps=1, extra=("--image-size=24", "--lines=5")),
        "thicker": make_tiny_run(root, steps=1, extra=("--sigma2=1e-2",)),
    }


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_pass_over_the_test_split_writes_consistent_results(runs, tmp_path):
    run = runs["trained"]
    results = main([str(run), "--output", str(tmp_path / "out")])
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["settings"]["split"] == "test" and saved["settings"]["n_candidates"] == 4
    assert saved["chance"] == 0.25

    # One pass: every test image is the target of exactly one game.
    games = read_log(out / "games.jsonl")
    assert len(games) == results["games"] == 40
    assert sorted(g["sender_id"] for g in games) == list(range(40))
    assert [g["game"] for g in games] == list(range(40))
    test_game = load_run(run).make_game("test")
    labels, classes = test_game.labels, test_game.dataset.classes
    for g in games:
        assert len(g["candidate_ids"]) == 4
        assert g["candidate_ids"][g["target"]] == g["sender_id"]
        assert g["correct"] == (g["choice"] == g["target"])
        assert g["target_class"] == classes[labels[g["sender_id"]]]
        assert g["choice_class"] == classes[labels[g["candidate_ids"][g["choice"]]]]
        assert g["class_correct"] == (g["target_class"] == g["choice_class"])

    # The summary agrees with the log, and with the trainer's own evaluation.
    assert results["comm_rate"] == pytest.approx(np.mean([g["correct"] for g in games]))
    assert results["class_rate"] == pytest.approx(np.mean([g["class_correct"] for g in games]))
    assert results["class_rate"] >= results["comm_rate"] > results["chance"]
    per_class = results["per_class"]
    assert sum(row["games"] for row in per_class.values()) == 40
    for name, row in per_class.items():
        mine = [g["correct"] for g in games if g["target_class"] == name]
        assert row["games"] == len(mine) and row["comm_rate"] == pytest.approx(np.mean(mine))
    trained = load_run(run)
    batches = test_game.epoch(10, torch.Generator().manual_seed(0))
    reference, _ = trainer_evaluate(
        trained.sender, trained.receiver, test_game, batches, torch.device("cpu")
    )
    assert results["comm_rate"] == pytest.approx(reference["comm_rate"])
    assert results["loss"] == pytest.approx(reference["loss"], rel=1e-5)

    with Image.open(out / "sketches.png") as sheet:
        assert sheet.width > 3 * 64 and sheet.height >= 64  # 16 px enlarged to 64


def test_same_seed_same_games_and_mean_std_over_batches(runs, tmp_path):
    run = str(runs["trained"])
    common = ["--batches", "3", "--batch-size", "8", "--grid", "0"]
    first = main([run, *common, "--seed", "5", "--output", str(tmp_path / "a")])
    again = main([run, *common, "--seed", "5", "--output", str(tmp_path / "b")])
    other = main([run, *common, "--seed", "6", "--output", str(tmp_path / "c")])
    log = (tmp_path / "a" / "games.jsonl").read_text()
    assert log == (tmp_path / "b" / "games.jsonl").read_text()
    assert log != (tmp_path / "c" / "games.jsonl").read_text()
    assert first["batch_comm_rates"] == again["batch_comm_rates"]
    assert other["settings"]["seed"] == 6
    assert not (tmp_path / "a" / "sketches.png").exists()

    # 3 batches of 2 blocks of 4 games; the spread is over those batches.
    assert first["games"] == 24 and first["batches"] == 3
    rates = first["batch_comm_rates"]
    assert first["comm_rate_mean"] == pytest.approx(np.mean(rates))
    assert first["comm_rate_std"] == pytest.approx(np.std(rates, ddof=1))
    assert [g["batch"] for g in read_log(tmp_path / "a" / "games.jsonl")] == [0] * 8 + [1] * 8 + [
        2
    ] * 8
    assert (
        main([run, "--games", "10", "--grid", "0", "--output", str(tmp_path / "d")])["games"] == 12
    )  # whole blocks


def test_other_game_variants_sizes_and_default_output(runs):
    run = runs["trained"]
    same = main([str(run), "--game", "oo-same", "--grid", "2"])
    assert same["settings"]["game"] == "oo-same" and same["settings"]["n_candidates"] == 4
    assert (run / "eval-test-oo-same" / "metrics.json").is_file()
    games = read_log(run / "eval-test-oo-same" / "games.jsonl")
    assert all(g["candidate_ids"][g["target"]] == g["sender_id"] for g in games)

    different = main([str(run / "last.pt"), "--game", "oo-different", "--n-distractors", "2"])
    assert different["settings"]["n_candidates"] == 3 and different["chance"] == pytest.approx(
        1 / 3
    )
    assert different["settings"]["sender_checkpoint"].endswith("last.pt")
    log = read_log(run / "eval-test-oo-different-2distractors" / "games.jsonl")
    assert any(g["candidate_ids"][g["target"]] != g["sender_id"] for g in log)  # another image

    val = main([str(run), "--split", "val", "--grid", "0"])
    assert val["settings"]["split"] == "val" and val["games"] == 20
    assert (run / "eval-val-original").is_dir()


def test_receiver_from_another_run(runs, tmp_path):
    trained, other, bigger = runs["trained"], runs["other"], runs["bigger"]
    alone = main([str(trained), "--grid", "0", "--output", str(tmp_path / "alone")])
    itself = main(
        [
            str(trained),
            "--receiver-from",
            str(trained),
            "--grid",
            "0",
            "--output",
            str(tmp_path / "self"),
        ]
    )
    assert itself["batch_comm_rates"] == alone["batch_comm_rates"]

    mixed = main([str(trained), "--receiver-from", str(other), "--grid", "0"])
    assert mixed["settings"]["receiver_checkpoint"].startswith(str(other))
    assert mixed["settings"]["sender_checkpoint"].startswith(str(trained))
    assert (trained / f"eval-test-original-receiver-{other.name}" / "games.jsonl").is_file()
    assert mixed["batch_comm_rates"] != alone["batch_comm_rates"]

    with pytest.warns(UserWarning, match="drawn with .*0.005.* trained on .*0.01"):
        main([str(trained), "--receiver-from", str(runs["thicker"]), "--games", "4", "--grid", "0"])
    with pytest.raises(
        ValueError, match=r"cannot pair.*image size: \[16, 16\] vs \[24, 24\].*lines: 4 vs 5"
    ):
        main([str(trained), "--receiver-from", str(bigger)])


def test_bad_input_gives_clear_errors(runs, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        main([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="--games must be positive"):
        main([str(runs["trained"]), "--games", "0"])
    with pytest.raises(ValueError, match="needs one candidate per class"):
        main([str(runs["trained"]), "--game", "oo-same", "--n-distractors", "9"])
    with pytest.raises(SystemExit):
        main([str(runs["trained"]), "--games", "5", "--batches", "2"])  # one or the other

    cli = subprocess.run(
        [sys.executable, "-m", "train.evaluate", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2
    assert "error:" in cli.stderr and "does not exist" in cli.stderr
    assert "Traceback" not in cli.stderr


# ----- recognisability -------------------------------------------------------------------


def constant_recogniser(path: Path, image_size: int, classes: list[str], answer: int) -> None:
    """A supervised weights file whose classifier names class ``answer`` for any image:
    an all-zero backbone gives all-zero features, so only the classifier's bias speaks."""
    backbone = make_backbone("small", "none", width=8)
    for p in backbone.parameters():
        torch.nn.init.zeros_(p)
    bias = torch.zeros(len(classes))
    bias[answer] = 1.0
    classifier = {"weight": torch.zeros(len(classes), 32), "bias": bias}
    info = {"method": "supervised", "dataset": "x", "image_size": [image_size] * 2, "width": 8}
    save_weights(path, backbone, {**info, "classes": classes}, classifier)


def test_recognisability_with_a_known_answer(runs, tmp_path):
    run = runs["trained"]
    classes = load_run(run).make_game("test").dataset.classes
    constant_recogniser(tmp_path / "always2.pt", 16, classes, answer=2)
    results = main(
        [str(run), "--recogniser", str(tmp_path / "always2.pt"), "--output", str(tmp_path / "out")]
    )
    games = read_log(tmp_path / "out" / "games.jsonl")
    assert all(g["sketch_recognised_as"] == classes[2] for g in games)
    share = np.mean([g["target_class"] == classes[2] for g in games])  # sketches of class 2
    assert results["recognisability"] == pytest.approx(share) and 0 < share < 1
    assert results["recogniser_image_accuracy"] == pytest.approx(share)
    assert results["recognisability_chance"] == 1 / len(classes)
    assert "recognisability" not in main([str(run), "--output", str(tmp_path / "plain")])


def test_recognisers_that_do_not_fit_or_trained_the_agents_are_refused(runs, tmp_path):
    run = runs["trained"]
    classes = load_run(run).make_game("test").dataset.classes
    constant_recogniser(tmp_path / "big.pt", 32, classes, answer=0)
    with pytest.raises(ValueError, match="image_size"):
        main([str(run), "--recogniser", str(tmp_path / "big.pt")])
    constant_recogniser(tmp_path / "other.pt", 16, ["a", "b", "c", "d"], answer=0)
    with pytest.raises(ValueError, match="classes"):
        main([str(run), "--recogniser", str(tmp_path / "other.pt")])
    with pytest.raises(FileNotFoundError, match="recogniser 'nothing' not found"):
        main([str(run), "--recogniser", "nothing"])
    # The agents' own pretrained weights cannot judge their sketches.
    constant_recogniser(tmp_path / "mine.pt", 16, classes, answer=0)
    trained_on_it = make_tiny_run(
        tmp_path, steps=1, extra=(f"--weights={tmp_path / 'mine.pt'}", "--backbone-width=8")
    )
    with pytest.raises(ValueError, match="same file"):
        main([str(trained_on_it), "--recogniser", str(tmp_path / "mine.pt")])
