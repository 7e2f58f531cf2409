"""agents/analysis.py and train/analyse.py: every measure on a case whose answer is known."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_evaluate import constant_recogniser
from test_policies import make_tiny_run

from agents import analysis
from agents.checkpoint import CheckpointError, load_run
from sketchenv.game import SketchGame
from sketchenv.raster import render_strokes, to_rgb
from train.analyse import image_distances, main
from train.evaluate import main as evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.getbasetemp() / "tiny-selfplay"  # shared with test_policies
    return {
        "trained": make_tiny_run(root),
        "other": make_tiny_run(root, steps=1, extra=("--seed=1",)),
        "bigger": make_tiny_run(root, steps=1, extra=("--image-size=24", "--lines=5")),
    }


def random_strokes(n: int, n_lines: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, n_lines, 4, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


# ----- topographic similarity ----------------------------------------------------------------
def test_rank_gives_ties_their_average_rank():
    assert analysis.rank(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert analysis.rank(torch.full((4,), 7.0)).tolist() == [1.5] * 4


def test_spearman_of_monotone_and_reversed_distances():
    meaning = analysis.pixel_distances(
        torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    )
    g = torch.Generator().manual_seed(1)
    same = analysis.topographic_similarity(meaning, meaning.pow(3) + 2, 200, g)
    reversed_ = analysis.topographic_similarity(meaning, -meaning, 200, g)
    assert same["rho"] == pytest.approx(1.0) and same["p_value"] < 0.01
    assert reversed_["rho"] == pytest.approx(-1.0) and reversed_["p_value"] < 0.01
    assert same["pairs"] == 12 * 11 // 2


def test_identical_sketches_have_no_topographic_similarity():
    meaning = analysis.pixel_distances(torch.randn(20, 8))
    strokes = random_strokes(1, 5).expand(20, -1, -1)
    sketches = render_strokes(strokes, 16, sigma2=5e-3)
    for form in (analysis.stroke_set_distances(strokes), analysis.pixel_distances(sketches)):
        assert analysis.topographic_similarity(meaning, form, 100) == {
            "rho": 0.0,
            "p_value": 1.0,
            "pairs": 190,
        }


def test_a_sender_that_copies_the_image_has_a_clearly_positive_topographic_similarity():
    """Images are line drawings of random strokes; the 'sender' draws those strokes again,
    in another order and from the other end: similar images get similar sketches."""
    strokes = random_strokes(60, 4)
    images = render_strokes(strokes, 24, sigma2=5e-3)
    shuffled = strokes[:, torch.randperm(4)][..., [2, 3, 0, 1]]
    form = analysis.stroke_set_distances(shuffled)
    assert torch.allclose(form, analysis.stroke_set_distances(strokes))  # order-free
    assert form.diagonal().abs().max() < 1e-6
    assert torch.allclose(form, form.T)
    g = torch.Generator().manual_seed(0)
    copy = analysis.topographic_similarity(analysis.pixel_distances(images), form, 200, g)
    assert copy["rho"] > 0.3 and copy["p_value"] < 0.01
    drawings = image_distances("drawing", None, torch.device("cpu"))(to_rgb(images))
    in_drawings = analysis.topographic_similarity(drawings, form, 200, g)
    assert in_drawings["rho"] > 0.3 and in_drawings["p_value"] < 0.01
    # A sender that ignores the image: unrelated strokes are not similar in the same way.
    unrelated = analysis.stroke_set_distances(random_strokes(60, 4, seed=5))
    chance = analysis.topographic_similarity(analysis.pixel_distances(images), unrelated, 200, g)
    assert abs(chance["rho"]) < 0.1 and chance["p_value"] > 0.01


def test_chamfer_distance_by_hand():
    a = torch.tensor([[[0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 1.0]]])
    b = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.7]]])  # same first segment
    d = analysis.stroke_set_distances(torch.cat([a, b]))
    # each stroke of a: 0 and 0.3 away; of b: 0 and 0.3 away -> mean 0.15 both ways
    assert d[0, 1].item() == pytest.approx(0.15)


# ----- cross-play and ablation on real runs ----------------------------------------------------
def tiny_game(run_dir) -> tuple[object, SketchGame, list]:
    run = load_run(run_dir)
    game = run.make_game("test")
    batches = [game.sample(4, torch.Generator().manual_seed(k)) for k in range(3)]
    return run, game, batches


def test_cross_play_of_a_run_with_itself_is_its_self_play_rate(runs, tmp_path):
    run, game, batches = tiny_game(runs["trained"])
    other = load_run(runs["other"])
    matrix = analysis.cross_play(
        [run.sender, other.sender], [run.receiver, other.receiver], game, batches
    )
    wins = sum(
        int(
            (
                game.choose(run.receiver(game.render(analysis.draw(run.sender, b)), b.candidates))
                == b.targets
            ).sum()
        )
        for b in batches
    )
    assert matrix.shape == (2, 2)
    assert matrix[0, 0].item() == pytest.approx(wins / sum(b.targets.numel() for b in batches))
    same = analysis.cross_play([run.sender] * 2, [run.receiver] * 2, game, batches)
    assert torch.equal(same, torch.full((2, 2), matrix[0, 0].item(), dtype=torch.float64))


def test_identical_sketches_lose_nothing_when_strokes_are_removed(runs):
    run, game, batches = tiny_game(runs["trained"])
    fixed = random_strokes(1, game.n_lines)

    def constant_sender(images):
        return fixed.expand(len(images), -1, -1)

    ablation = analysis.stroke_ablation(constant_sender, run.receiver, game, batches)
    full = ablation["most_ink_first"][0]
    assert full == pytest.approx(1 / game.n_candidates)  # one win per block: chance exactly
    for rates in ablation.values():
        assert rates == pytest.approx([full] * len(rates))


def test_ablation_removes_the_strokes_it_names(runs):
    run, game, batches = tiny_game(runs["trained"])
    ablation = analysis.stroke_ablation(run.sender, run.receiver, game, batches)
    assert len(ablation["by_index"]) == game.n_lines
    assert ablation["most_ink_first"][0] == ablation["least_ink_first"][0]
    assert ablation["most_ink_first"][-1] == ablation["least_ink_first"][-1]  # blank canvas
    strokes = random_strokes(2, game.n_lines)
    blank = game.render(
        analysis.remove_strokes(game, strokes, torch.ones(2, game.n_lines, dtype=torch.bool))
    )
    assert torch.equal(blank, torch.ones_like(blank))
    one_left = torch.ones(2, game.n_lines, dtype=torch.bool)
    one_left[:, 1] = False
    alone = to_rgb(render_strokes(strokes[:, 1:2], game.image_size, sigma2=game.sigma2))
    assert torch.allclose(game.render(analysis.remove_strokes(game, strokes, one_left)), alone)
    ink = analysis.stroke_ink(game, strokes)
    assert torch.allclose(ink[:, 1], (1 - alone[:, 0]).sum((-2, -1)), atol=1e-4)


def test_drawing_statistics_by_hand(runs):
    _, game, _ = tiny_game(runs["trained"])
    strokes = torch.tensor(
        [[0.0, 0.0, 1.0, 0.0], [-0.5, -0.5, -0.5, 0.5]] + [[-4.0] * 4] * (game.n_lines - 2)
    )
    sketches = game.render(strokes[None])[:, 0]
    stats = analysis.drawing_statistics(game, strokes[None], sketches)
    assert stats["stroke_length"][:2].tolist() == pytest.approx([0.5, 0.5])
    assert stats["visible_strokes"].tolist() == [2]
    assert stats["ink_map"].shape == tuple(game.image_size)
    assert stats["ink_per_sketch"].item() == pytest.approx((1 - sketches).mean().item())


# ----- the command ---------------------------------------------------------------------------
def test_report_of_two_runs_is_complete_consistent_and_repeatable(runs, tmp_path):
    flags = ["--games=48", "--permutations=50", "--topsim-sketches=20", "--per-class=2"]
    with pytest.warns(UserWarning, match=r"trained with seeds \[0, 1\]"):
        results = main(
            [str(runs["trained"]), str(runs["other"]), *flags, f"--output={tmp_path / 'a'}"]
        )
    names = list(results["runs"])
    assert names == [runs["trained"].name, runs["other"].name]
    for name in names:
        for figure in results["runs"][name]["figures"].values():
            assert (tmp_path / "a" / figure).stat().st_size > 1000
        assert results["runs"][name]["curves"]["games"]  # read from metrics.csv
    for figure in ("cross-play.png", "curves.png"):
        assert (tmp_path / "a" / figure).stat().st_size > 1000
    report = (tmp_path / "a" / "report.md").read_text()
    assert all(f"({f})" in report for r in results["runs"].values() for f in r["figures"].values())
    # The diagonal is self-play, the same number train.evaluate reports for the same games.
    for k, name in enumerate(names):
        assert results["cross_play"][k][k] == results["runs"][name]["comm_rate"]
    evaluated = evaluate([str(runs["trained"]), "--games=48", "--output", str(tmp_path / "e")])
    assert results["runs"][names[0]]["comm_rate"] == pytest.approx(evaluated["comm_rate"])
    # Same seed, same numbers; written as results.json.
    with pytest.warns(UserWarning, match="trained with seeds"):
        again = main(
            [str(runs["trained"]), str(runs["other"]), *flags, f"--output={tmp_path / 'b'}"]
        )
    for r in (results, again):
        r["settings"].pop("seconds")
        for run in r["runs"].values():
            run.pop("checkpoint")
    assert again == results
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["cross_play"] == results["cross_play"]


def test_bad_input_gives_clear_errors(runs, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        main([str(empty)])
    with pytest.raises(ValueError, match="cannot pair"):
        main([str(runs["trained"]), str(runs["bigger"]), "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="--games must be at least 1"):
        main([str(runs["trained"]), "--games=0"])
    with pytest.raises(FileNotFoundError, match="--features 'nope' not found"):
        main([str(runs["trained"]), "--features=nope", "--output", str(tmp_path / "y")])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"sketchenv\[analyse\]"):
        main([str(runs["trained"]), "--output", str(tmp_path / "z")])


def test_per_class_recognisability_with_a_known_answer(runs, tmp_path):
    classes = load_run(runs["trained"]).make_game("test").dataset.classes
    constant_recogniser(tmp_path / "always2.pt", 16, classes, answer=2)
    results = main(
        [
            str(runs["trained"]),
            "--games=48",
            "--permutations=10",
            "--topsim-sketches=10",
            f"--recogniser={tmp_path / 'always2.pt'}",
            "--features=drawing",
            f"--output={tmp_path / 'r'}",
        ]
    )
    assert results["settings"]["features"] == "drawing"
    per_class = results["runs"][runs["trained"].name]["per_class"]
    for c, name in enumerate(classes):
        assert per_class[name]["recognisability"] == (1.0 if c == 2 else 0.0)
    share = per_class[classes[2]]["games"] / sum(row["games"] for row in per_class.values())
    assert results["runs"][runs["trained"].name]["recognisability"] == pytest.approx(share)


def test_curves_are_matched_in_either_direction_removed_and_inked_as_their_format():
    from sketchenv.strokes import StrokeFormat

    cubic = StrokeFormat("cubic", opacity=True, colour=True)  # 12 numbers per stroke
    g = torch.Generator().manual_seed(3)
    strokes = torch.rand(4, 3, 12, generator=g)
    reversed_points = strokes.clone()
    reversed_points[..., :8] = strokes[..., :8].unflatten(-1, (4, 2)).flip(-2).flatten(-2)
    d = analysis.stroke_set_distances(torch.cat([strokes, reversed_points]), cubic)
    assert torch.allclose(d[:4, 4:].diagonal(), torch.zeros(4, dtype=torch.float64), atol=1e-7)
    assert (d[:4, :4] + torch.eye(4, dtype=torch.float64) > 0).all()
    game = SketchGame(torch.utils.data.TensorDataset(torch.rand(4, 3, 12, 12), torch.arange(4)),
                      "original", n_distractors=3, n_lines=3, stroke_format=cubic,
                      composite="over")  # fmt: skip
    removed = torch.tensor([[True, False, False]]).expand(4, 3)
    parked = analysis.remove_strokes(game, strokes, removed)
    assert (parked[:, 0, :8] == analysis.PARKED).all() and torch.equal(
        parked[:, 0, 8:], strokes[:, 0, 8:]
    )
    assert torch.equal(parked[:, 1:], strokes[:, 1:])
    ink = analysis.stroke_ink(game, strokes)  # colour does not change a stroke's ink
    black = strokes.clone()
    black[..., 9:] = 0
    assert ink.shape == (4, 3) and torch.equal(ink, analysis.stroke_ink(game, black))
