"""Evaluate trained agents: play many games and report how well they communicate.

    python -m train.evaluate runs/my-run                          # test split, the run's game
    python -m train.evaluate runs/my-run --game oo-same --split val --games 2000
    python -m train.evaluate runs/a --receiver-from runs/b        # a's sender, b's receiver

By default every image of the split is the target of one game (one pass, as in training);
``--games N`` or ``--batches K`` draw random blocks of games instead. The same ``--seed``
plays the same games. Written atomically to ``--output`` (default
``<run>/eval-<split>-<game>/``):

* ``metrics.json``  communication rate (pooled, and mean +- std over batches), class
  communication rate, chance, loss, per-class rates (by the target's class), strokes
  used per sketch (mean, std and histogram; strokes with opacity > 0.1 when the stroke
  format has opacity, else all), settings, and the sketches' *recognisability* (below);
* ``games.jsonl``   one record per game: candidate ids (dataset indices), target, choice,
  correct, class_correct, strokes used, the sender's image id and class names;
* ``sketches.png``  the first games: the sender's image, its sketch and the receiver's
  pick, framed green when the pick is right and red when it is wrong;
* ``sketches-svg/``  those games' sketches as SVG (``sketchenv.strokes_to_svg``).

Recognisability is the accuracy with which an independent classifier (``--recogniser``:
a supervised weights file of ``python -m train.pretrain``, trained on the dataset's real
training images, never used to train the agents) names the class of the image each
sketch was drawn from; its chance level is one over the number of classes. By default a
shipped recogniser is used when one fits the run's dataset and image size.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from agents import distributed
from agents.backbones import describe_weights
from agents.checkpoint import Run, load_run
from agents.config import GAMES
from agents.experiment import make_game
from agents.files import make_folder, remove_stray_temporaries, write_atomic
from agents.losses import game_loss
from agents.recognise import Recogniser, check_independent, shipped_recogniser
from agents.selfplay import validation_batches
from agents.trainer import Outcome, autocast, play
from sketchenv.game import GameBatch, SketchGame
from sketchenv.strokes import strokes_to_svg, strokes_used
from train.flags import run_command

GREEN, RED = (0.1, 0.7, 0.2), (0.85, 0.1, 0.1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("run", help="run directory or checkpoint file (its sender, and its receiver)")
    p.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="of a run dir [best]"
    )
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="[test]")
    p.add_argument("--game", choices=GAMES, help="game variant [the run's]")
    p.add_argument(
        "--n-distractors",
        type=int,
        metavar="N",
        help="[the run's for the same kind of game, else the variant's default]",
    )
    count = p.add_mutually_exclusive_group()
    count.add_argument(
        "--games", type=int, metavar="N", help="random games, whole blocks [one pass]"
    )
    count.add_argument("--batches", type=int, metavar="N", help="random batches [one pass]")
    p.add_argument("--batch-size", type=int, metavar="N", help="games per batch [the run's]")
    p.add_argument("--seed", type=int, default=0, help="picks the games [0]")
    p.add_argument(
        "--receiver-from", metavar="RUN", help="run dir or checkpoint whose receiver plays"
    )
    p.add_argument("--output", metavar="DIR", help="results folder [<run>/eval-<split>-<game>]")
    p.add_argument("--data-root", metavar="DIR", help="where the dataset lives [the run's]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--grid", type=int, default=16, metavar="N", help="games in sketches.png [16]")
    p.add_argument(
        "--recogniser",
        metavar="WEIGHTS",
        help="supervised weights file (or shipped name) that names each sketch's class "
        "['<dataset>-recogniser-<size>' when shipped; 'none' skips]",
    )
    return p


def make_recogniser(
    run: Run, game: SketchGame, spec: str | None, device: torch.device
) -> Recogniser | None:
    """The recogniser ``spec`` names (default: the shipped one for this dataset and image
    size, if any), checked to be independent of the agents' training."""
    if spec == "none":
        return None
    spec = spec or shipped_recogniser(run.config.dataset, game.image_size)
    if spec is None:
        return None
    classes = [str(c) for c in getattr(game.dataset, "classes", range(game.n_classes))]
    recogniser = Recogniser(spec, game.image_size, classes)
    check_independent(recogniser, [run.config.weights, run.config.perceptual_net])
    return recogniser.to(device)


# ----- what plays -----------------------------------------------------------------------------
def check_pairing(sender_run: Run, receiver_run: Run) -> None:
    """A receiver reads sketches of one size, stroke count, stroke format and polarity:
    refuse other pairings; warn when the stroke width or rasteriser differs."""
    # Runs saved before stroke formats existed drew lines.
    s, r = ({"stroke_format": "line", **run.game} for run in (sender_run, receiver_run))
    keys = (
        ("image size", "image_size"),
        ("lines", "n_lines"),
        ("stroke format", "stroke_format"),
        ("invert", "invert"),
    )
    differences = [
        f"{name}: {s[key]} vs {r[key]}"
        for name, key in keys
        if list(np.atleast_1d(s[key])) != list(np.atleast_1d(r[key]))
    ]
    if differences:
        raise ValueError(
            f"cannot pair the sender of {sender_run.path} with the receiver of "
            f"{receiver_run.path}: their games differ ({'; '.join(differences)}). "
            "A receiver only reads sketches of the size, stroke count, stroke format and "
            "polarity it was trained on; pair runs trained with the same --image-size, "
            "--lines, --primitive, --stroke-* options and --invert"
        )
    drawn = {k: s.get(k) for k in ("sigma2", "kernel", "composite")}
    read = {k: r.get(k) for k in drawn}
    if drawn != read:
        warnings.warn(
            f"the sender's sketches are drawn with {drawn}; the receiver was trained on {read}",
            stacklevel=2,
        )


def evaluation_game(run: Run, args: argparse.Namespace) -> SketchGame:
    """The run's dataset on ``args.split`` with the run's sketch settings, any variant."""
    variant = args.game or run.config.game
    n_distractors = args.n_distractors
    same_kind = (variant == "original") == (run.config.game == "original")
    if n_distractors is None and same_kind:  # original vs OO games differ in size
        n_distractors = run.game["n_distractors"]
    config = run.config.replace(
        n_distractors=n_distractors, data_root=args.data_root or run.config.data_root
    )
    game = make_game(config, args.split, game=variant)
    if list(game.image_size) != list(run.game["image_size"]):
        raise ValueError(
            f"the {args.split} images are {list(game.image_size)} px but the agents were trained "
            f"on {run.game['image_size']} px; has the dataset changed?"
        )
    return game


def evaluation_batches(
    game: SketchGame, args: argparse.Namespace, blocks_per_batch: int
) -> tuple[Iterator[GameBatch], int]:
    """One pass over the split, or ``--games`` / ``--batches`` random ones (seeded), and
    how many batches that is."""
    if args.games is None and args.batches is None:
        batches = game.epoch(blocks_per_batch, torch.Generator().manual_seed(args.seed))
        return batches, math.ceil(game.blocks_per_epoch / blocks_per_batch)
    n_games = args.games or args.batches * blocks_per_batch * game.n_candidates
    n_blocks = math.ceil(n_games / game.n_candidates)
    batches = validation_batches(game, n_games, blocks_per_batch, args.seed)
    return batches, math.ceil(n_blocks / blocks_per_batch)


# ----- results --------------------------------------------------------------------------------
def batch_results(
    game: SketchGame,
    index: int,
    batch: GameBatch,
    outcome: Outcome,
    choices: Tensor,
    loss: str,
    recogniser: Recogniser | None,
    classes: Sequence[str],
) -> dict[str, Any]:
    """What batch ``index`` adds to the results, small and on the CPU (no images), so
    that rank 0 can gather every process's batches."""
    sketches, images = outcome.sketches.flatten(0, 1), batch.sender_images.flatten(0, 1)
    rates = game.score(choices, batch)
    batch_loss = game_loss(outcome.scores.float(), batch.targets, loss).item()
    batch, choices = batch.to("cpu"), choices.cpu()
    picked_labels = batch.candidate_labels.gather(1, choices)
    results = {
        "index": index,
        "rates": rates,
        "loss": batch_loss,
        "correct": (choices == batch.targets).flatten(),
        "class_correct": (picked_labels == batch.sender_labels).flatten(),
        "labels": batch.sender_labels.flatten(),
        "records": game_records(batch, choices, 0, index, classes),
        "strokes_used": strokes_used(outcome.strokes.flatten(0, 1), game.stroke_format).cpu(),
    }
    for record, used in zip(results["records"], results["strokes_used"].tolist(), strict=True):
        record["strokes_used"] = used
    if recogniser is not None:
        names = recogniser(sketches).cpu()
        results["recognised"] = names == results["labels"]
        results["image_recognised"] = recogniser(images).cpu() == results["labels"]
        for record, name in zip(results["records"], names.tolist(), strict=True):
            record["sketch_recognised_as"] = classes[name]
    return results


def game_records(
    batch: GameBatch, choices: Tensor, first: int, batch_index: int, classes: Sequence[str]
) -> list[dict[str, Any]]:
    """One JSON-ready record per game of ``batch`` (CPU tensors; games numbered from
    ``first``)."""
    n_games = batch.targets.shape[1]
    picked_labels = batch.candidate_labels.gather(1, choices)
    candidate_ids = batch.candidate_ids.tolist()
    columns = zip(
        batch.sender_ids.flatten().tolist(),
        batch.targets.flatten().tolist(),
        choices.flatten().tolist(),
        batch.sender_labels.flatten().tolist(),
        picked_labels.flatten().tolist(),
        strict=True,
    )
    return [
        {
            "game": first + i,
            "batch": batch_index,
            "block": i // n_games,
            "sender_id": sender_id,
            "candidate_ids": candidate_ids[i // n_games],
            "target": target,
            "choice": choice,
            "correct": choice == target,
            "class_correct": picked == label,
            "target_class": classes[label],
            "choice_class": classes[picked],
        }
        for i, (sender_id, target, choice, label, picked) in enumerate(columns)
    ]


def sketch_sheet(batch: GameBatch, sketches: Tensor, choices: Tensor, n: int = 16) -> Tensor:
    """[image | sketch | receiver's pick] for the first ``n`` games, framed green when the
    pick is the target and red when not; small images are enlarged to 64 px."""
    n_games = batch.targets.shape[1]
    n = min(n, batch.targets.numel())
    blocks = torch.arange(n) // n_games
    picks = choices.flatten()[:n].cpu()
    triples = torch.cat(
        [
            batch.sender_images.flatten(0, 1)[:n].cpu(),
            sketches.flatten(0, 1)[:n].cpu(),
            batch.candidates.cpu()[blocks, picks],
        ],
        dim=-1,
    ).float()
    scale = max(1, math.ceil(64 / triples.shape[-2]))
    triples = F.interpolate(triples, scale_factor=scale, mode="nearest")
    correct = (picks == batch.targets.flatten()[:n].cpu()).tolist()
    frame = torch.tensor([GREEN if ok else RED for ok in correct]).view(n, 3, 1, 1)
    framed = frame.expand(n, 3, triples.shape[-2] + 6, triples.shape[-1] + 6).clone()
    framed[..., 3:-3, 3:-3] = triples
    return make_grid(framed, nrow=4, padding=4, pad_value=1.0)


def sheet_svgs(game: SketchGame, strokes: Tensor, n: int) -> list[str]:
    """The first ``n`` sketches of a batch (those of :func:`sketch_sheet`) as SVG documents."""
    flat = strokes.flatten(0, 1)[:n].float().cpu()
    return [
        strokes_to_svg(s, game.stroke_format, sigma2=game.sigma2, invert=game.invert) for s in flat
    ]


def summarise(
    batch_rates: list[dict[str, float]],
    correct: Tensor,
    class_correct: Tensor,
    target_labels: Tensor,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Pooled rates, mean +- std over batches, and rates per target class."""
    result: dict[str, Any] = {"games": int(correct.numel()), "batches": len(batch_rates)}
    for key, per_game in (("comm_rate", correct), ("class_rate", class_correct)):
        per_batch = np.array([rates[key] for rates in batch_rates])
        result[key] = per_game.float().mean().item()
        result[f"{key}_mean"] = float(per_batch.mean())
        result[f"{key}_std"] = float(per_batch.std(ddof=1)) if len(per_batch) > 1 else 0.0
        result[f"batch_{key}s"] = per_batch.tolist()
    n_classes = len(classes)
    games = torch.bincount(target_labels, minlength=n_classes)
    hits = torch.bincount(target_labels, weights=correct.double(), minlength=n_classes)
    class_hits = torch.bincount(target_labels, weights=class_correct.double(), minlength=n_classes)
    result["per_class"] = {
        str(name): {
            "games": int(games[c]),
            "comm_rate": float(hits[c] / games[c]) if games[c] else None,
            "class_rate": float(class_hits[c] / games[c]) if games[c] else None,
        }
        for c, name in enumerate(classes)
    }
    return result


def default_output(args: argparse.Namespace, variant: str) -> Path:
    """``<run>/eval-<split>-<game>``, plus what differs from a plain evaluation."""
    run = Path(args.run)
    run_dir = run.parent if run.is_file() else run
    name = f"eval-{args.split}-{variant}"
    if args.n_distractors is not None:
        name += f"-{args.n_distractors}distractors"
    if args.receiver_from:
        other = Path(args.receiver_from)
        name += f"-receiver-{(other.parent if other.is_file() else other).name}"
    return run_dir / name


# ----- the evaluation -------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate and write the results; returns what ``metrics.json`` holds."""
    args = build_parser().parse_args(argv)
    for flag in ("games", "batches", "batch_size", "n_distractors", "grid"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "grid" else 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    processes, device = distributed.start(args.device)

    # What plays: one run's sender, its own or another run's receiver.
    run = load_run(args.run, device=device, which=args.checkpoint)
    receiver_run = run
    if args.receiver_from:
        receiver_run = load_run(args.receiver_from, device=device, which=args.checkpoint)
        check_pairing(run, receiver_run)
    sender, receiver = run.sender, receiver_run.receiver
    amp = run.config.amp if device.type == "cuda" else run.config.cpu_bfloat16

    # Which games: the split, the variant, the number of candidates, the batches.
    game = evaluation_game(run, args)
    classes = [str(c) for c in getattr(game.dataset, "classes", range(game.n_classes))]
    blocks_per_batch = max(1, (args.batch_size or run.config.batch_size) // game.n_candidates)
    output = Path(args.output) if args.output else default_output(args, game.game)
    if processes.main:
        make_folder(output)
        remove_stray_temporaries(output)  # a killed evaluation's half-written files

    # Play: under torchrun each process plays every world-th batch; rank 0 gathers them
    # all, in order, and writes the results (the same as one process would).
    recogniser = make_recogniser(run, game, args.recogniser, device)
    batches, n_batches = evaluation_batches(game, args, blocks_per_batch)
    if processes.main:
        print(f"evaluating {n_batches} batches of {game.game} -> {output}", flush=True)
    bar = tqdm(batches, total=n_batches, desc="evaluate", unit="batch", leave=False,
               disable=not processes.main)  # fmt: skip
    played, sheet, vectors = [], None, []
    with torch.no_grad():
        for index, batch in enumerate(bar):
            if index % processes.world != processes.rank:
                continue
            batch = batch.to(device, non_blocking=device.type == "cuda")
            with autocast(device, amp):
                outcome = play(sender, receiver, game, batch)
            choices = game.choose(outcome.scores)
            if index == 0 and args.grid:
                sheet = sketch_sheet(batch, outcome.sketches, choices, args.grid)
                vectors = sheet_svgs(game, outcome.strokes, args.grid)
            played.append(
                batch_results(
                    game, index, batch, outcome, choices, run.config.loss, recogniser, classes
                )
            )
    played = processes.gather(played)
    distributed.stop()
    if not processes.main:
        return {}
    if not played:
        raise ValueError(f"no games: the {args.split} split is too small for one block")
    played.sort(key=lambda p: p["index"])
    n_played, lines = 0, []
    for p in played:  # games numbered across batches
        lines += [json.dumps(r | {"game": n_played + r["game"]}) + "\n" for r in p["records"]]
        n_played += len(p["records"])
    write_atomic(output / "games.jsonl", "".join(lines).encode())
    batch_rates = [p["rates"] for p in played]
    correct = [p["correct"] for p in played]
    class_correct = [p["class_correct"] for p in played]
    labels = [p["labels"] for p in played]
    losses = [p["loss"] for p in played]

    # Results: metrics.json, sketches.png, a summary on stdout.
    results = summarise(
        batch_rates, torch.cat(correct), torch.cat(class_correct), torch.cat(labels), classes
    )
    weights = torch.tensor([float(r.numel()) for r in correct])
    results["loss"] = float((torch.tensor(losses) * weights).sum() / weights.sum())
    results["chance"] = 1 / game.n_candidates
    used = torch.cat([p["strokes_used"] for p in played])
    results["strokes_used"] = {
        "mean": used.float().mean().item(),
        "std": used.float().std(unbiased=False).item(),
        "histogram": {str(k): int(c) for k, c in enumerate(torch.bincount(used)) if c},
    }
    if recogniser is not None:
        recognised = torch.cat([p["recognised"] for p in played])
        image_recognised = torch.cat([p["image_recognised"] for p in played])
        results["recognisability"] = recognised.float().mean().item()
        results["recognisability_chance"] = 1 / game.n_classes
        results["recogniser_image_accuracy"] = image_recognised.float().mean().item()
        results["recogniser"] = {
            "path": recogniser.path,
            "made_by": describe_weights(recogniser.info),
        }
    results["settings"] = {
        "sender_checkpoint": run.path,
        "receiver_checkpoint": receiver_run.path,
        "dataset": run.config.dataset,
        "split": args.split,
        "game": game.game,
        "n_distractors": game.n_distractors,
        "n_candidates": game.n_candidates,
        "image_size": list(game.image_size),
        "n_lines": game.n_lines,
        "stroke_format": str(game.stroke_format),
        "games_per_batch": blocks_per_batch * game.n_candidates,
        "sampling": "one pass" if args.games is None and args.batches is None else "random",
        "seed": args.seed,
        "device": str(device),
    }
    write_atomic(output / "metrics.json", json.dumps(results, indent=2).encode())
    if sheet is not None:
        png = io.BytesIO()
        save_image(sheet, png, format="png")
        write_atomic(output / "sketches.png", png.getvalue())
        make_folder(output / "sketches-svg")
        for i, svg in enumerate(vectors):
            write_atomic(output / "sketches-svg" / f"{i:03d}.svg", svg.encode())
    print(format_summary(results), flush=True)
    written = ["metrics.json", "games.jsonl"]
    written += ["sketches.png", "sketches-svg/"] if sheet is not None else []
    print(f"wrote {', '.join(written)} in {output}")
    return results


def format_summary(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"{s['game']} game, {s['n_candidates']} candidates, {s['split']} split: "
        f"{results['games']} games in {results['batches']} batches",
        f"communication rate {results['comm_rate_mean']:.4f} +- {results['comm_rate_std']:.4f}"
        f" (chance {results['chance']:.4f})",
        f"class communication rate {results['class_rate_mean']:.4f} +- "
        f"{results['class_rate_std']:.4f}",
        f"strokes used per sketch {results['strokes_used']['mean']:.2f} +- "
        f"{results['strokes_used']['std']:.2f} of {s['n_lines']} ({s['stroke_format']})",
    ]
    if "recognisability" in results:
        lines.append(
            f"recognisability {results['recognisability']:.4f} (chance "
            f"{results['recognisability_chance']:.4f}; the recogniser names "
            f"{results['recogniser_image_accuracy']:.4f} of the images themselves)"
        )
    lines.append(f"{'class':<16} {'games':>6} {'comm':>6} {'class':>6}")
    for name, row in results["per_class"].items():
        if row["games"]:
            lines.append(
                f"{name[:16]:<16} {row['games']:>6} {row['comm_rate']:>6.3f} {row['class_rate']:>6.3f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    run_command(main, "python -m train.evaluate")
