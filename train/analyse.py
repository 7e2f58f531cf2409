"""What do the sketches say? A report on the protocol of one or more trained runs.

    python -m train.analyse runs/a                           # -> runs/a/analysis-test-original/
    python -m train.analyse runs/s0 runs/s1 runs/s2 --output reports/seeds

Every run plays the same games: one pass over ``--split`` (every image the target of one
game, as in ``train.evaluate``), or ``--games`` random ones; ``--seed`` picks them. For each run: topographic similarity (do similar images get similar
sketches?), stroke ablation (which strokes carry the message), per-class sheets with the
mean sketch and the class's recognisability, and statistics of the drawing. For all runs
together: cross-play (every sender with every receiver) and the training curves. Written
atomically to ``--output``: ``report.md`` (renders on GitHub with its figures),
``results.json`` (every number) and the PNG figures. Figures need matplotlib
(``pip install 'sketchenv[analyse]'``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid
from tqdm import tqdm

from agents import analysis
from agents.backbones import make_backbone, read_weights
from agents.checkpoint import Run, load_run
from agents.config import GAMES
from agents.edges import line_drawing
from agents.files import make_folder, write_atomic
from agents.methods import pool
from agents.recognise import shipped_recogniser
from agents.trainer import select_device
from agents.zoo import resolve_weights, shipped
from sketchenv.game import GameBatch, SketchGame
from train.evaluate import check_pairing, evaluation_batches, evaluation_game, make_recogniser
from train.flags import run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.analyse", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or checkpoint files")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="[best]")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="[test]")
    p.add_argument("--game", choices=GAMES, help="game variant [the first run's]")
    p.add_argument("--n-distractors", type=int, metavar="N", help="[the first run's]")
    p.add_argument(
        "--games", type=int, metavar="N", help="random games, whole blocks [one pass, as evaluate]"
    )
    p.add_argument("--seed", type=int, default=0, help="picks the games and permutations [0]")
    p.add_argument(
        "--topsim-sketches",
        type=int,
        default=300,
        metavar="N",
        help="sketches (of distinct images) in the topographic similarity [300]",
    )
    p.add_argument("--permutations", type=int, default=1000, metavar="N", help="[1000]")
    p.add_argument(
        "--features",
        metavar="WEIGHTS",
        help="what gives the images' distances: a weights file or shipped name (its features), "
        "'drawing' (the images' line drawings) or 'pixels' ['<dataset>-recogniser-<size>' "
        "when shipped, else pixels]",
    )
    p.add_argument(
        "--recogniser",
        metavar="WEIGHTS",
        help="classifier for per-class recognisability, as in train.evaluate ['none' skips]",
    )
    p.add_argument("--per-class", type=int, default=6, metavar="N", help="sketches per class [6]")
    p.add_argument("--output", metavar="DIR", help="[<first run>/analysis-<split>-<game>]")
    p.add_argument("--data-root", metavar="DIR", help="where the dataset lives [the run's]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    return p


# ----- the games and what each run draws in them ------------------------------------------------
def check_same_game(runs: Sequence[Run]) -> None:
    """Cross-play needs runs whose receivers read each other's sketches, on one dataset."""
    first = runs[0]
    for other in runs[1:]:
        if other.config.dataset != first.config.dataset:
            raise ValueError(
                f"runs {first.path} and {other.path} were trained on different datasets "
                f"({first.config.dataset} vs {other.config.dataset}): analyse them separately"
            )
        check_pairing(first, other)
        check_pairing(other, first)
    seeds = sorted({run.config.seed for run in runs})
    if len(seeds) > 1:
        warnings.warn(
            f"the runs were trained with seeds {seeds}, and a dataset's seed fixes its generated "
            f"images and the held-out splits it draws: every run plays on the split of "
            f"{first.path} (seed {first.config.seed}), which another run may have trained on "
            "where a dataset draws its held-out splits by seed (Caltech-101, CIFAR's "
            "validation split; not shapes, whose images differ by seed, nor official test sets)",
            stacklevel=2,
        )


@torch.no_grad()
def play_run(run: Run, game: SketchGame, batches: Sequence[GameBatch]) -> dict[str, Tensor]:
    """The run's strokes and (greyscale) sketches for every game, with the games' images,
    labels and sender ids, flattened over batches."""
    parts: dict[str, list[Tensor]] = {
        k: [] for k in ("strokes", "sketches", "images", "labels", "ids")
    }
    for batch in batches:
        strokes = analysis.draw(run.sender, batch)
        parts["strokes"].append(strokes.flatten(0, 1).cpu())
        sketches = game.render(strokes)
        grey = sketches.mean(2) if game.stroke_format.colour else sketches[:, :, 0]
        parts["sketches"].append(grey.flatten(0, 1).cpu())
        parts["images"].append(batch.sender_images.flatten(0, 1).cpu())
        parts["labels"].append(batch.sender_labels.flatten().cpu())
        parts["ids"].append(batch.sender_ids.flatten().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def image_distances(
    spec: str, game: SketchGame, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """``images [N, 3, H, W] -> [N, N]`` distances for the topographic similarity: Euclidean
    between pixels (``pixels``) or between the images' line drawings at a quarter of their
    size (``drawing``: where the outlines are), else cosine between the pooled features of
    a weights file's backbone."""
    if spec == "pixels":
        return analysis.pixel_distances
    if spec == "drawing":
        return lambda images: analysis.pixel_distances(
            F.avg_pool2d(line_drawing(images)[:, :1], 4, ceil_mode=True)
        )
    path = resolve_weights(spec)
    if path is None:
        raise FileNotFoundError(
            f"--features {spec!r} not found: give a weights file, a shipped "
            f"name ({', '.join(shipped())}), 'drawing' or 'pixels'"
        )
    _, info = read_weights(path)
    if info is None:
        raise ValueError(f"--features {spec!r} is not a weights file of python -m train.pretrain")
    backbone = make_backbone(
        info["backbone"], path, width=info.get("width") or 32, image_size=game.image_size
    )
    backbone.eval().to(device)
    return lambda images: analysis.cosine_distances(pool(backbone(images.to(device))).cpu())


@torch.no_grad()
def topographic(
    game: SketchGame,
    drawn: dict[str, Tensor],
    distances: Callable[[Tensor], Tensor],
    n: int,
    permutations: int,
    seed: int,
) -> dict[str, Any]:
    """Topographic similarity of the first ``n`` distinct images' sketches, in stroke space
    and in pixel space, against the images' ``distances``."""
    first_game: dict[int, int] = {}
    for game_index, image_id in enumerate(drawn["ids"].tolist()):
        first_game.setdefault(image_id, game_index)
    keep = sorted(first_game.values())[:n]
    images, strokes, sketches = (drawn[k][keep] for k in ("images", "strokes", "sketches"))
    meaning = distances(images)
    result = {"sketches": len(keep)}
    for space, form in (
        ("strokes", analysis.stroke_set_distances(strokes, game.stroke_format)),
        ("pixels", analysis.pixel_distances(sketches)),
    ):
        generator = torch.Generator().manual_seed(seed)
        result[space] = analysis.topographic_similarity(meaning, form, permutations, generator)
    return result


@torch.no_grad()
def recognise(recogniser: torch.nn.Module | None, drawn: dict[str, Tensor]) -> Tensor | None:
    """Per sketch: does the recogniser name its image's class? (None without one.)"""
    if recogniser is None:
        return None
    device = next(recogniser.parameters()).device
    sketches = drawn["sketches"].unsqueeze(1).expand(-1, 3, -1, -1)
    names = torch.cat([recogniser(part.to(device)).cpu() for part in sketches.split(500)])
    return names == drawn["labels"]


def per_class(
    drawn: dict[str, Tensor], classes: Sequence[str], recognised: Tensor | None, n_show: int
) -> tuple[dict[str, Any], Tensor]:
    """Per class: games, recognisability (when a recogniser ran); and a sheet whose row ``c``
    is the class's mean sketch, then ``n_show`` (image, sketch) pairs."""
    rows, numbers = [], {}
    images, sketches, labels = drawn["images"], drawn["sketches"], drawn["labels"]
    blank = torch.ones_like(images[0])
    for c, name in enumerate(classes):
        members = (labels == c).nonzero().flatten()
        numbers[name] = {"games": len(members)}
        if recognised is not None and len(members):
            numbers[name]["recognisability"] = recognised[members].float().mean().item()
        mean_sketch = sketches[members].mean(0) if len(members) else blank[0]
        tiles = [mean_sketch.expand(3, -1, -1)]
        for k in range(n_show):
            if k < len(members):
                tiles += [images[members[k]], sketches[members[k]].expand(3, -1, -1)]
            else:
                tiles += [blank, blank]
        rows.append(torch.stack(tiles))
    sheet = make_grid(torch.cat(rows), nrow=1 + 2 * n_show, padding=2, pad_value=0.6)
    return numbers, sheet


def training_curves(run: Run) -> dict[str, list[float]]:
    """Validation communication rate by games played and by seconds, from ``metrics.csv``."""
    folder = Path(run.path).parent
    path = folder / "metrics.csv"
    curves: dict[str, list[float]] = {"games": [], "seconds": [], "val_comm_rate": []}
    if not path.is_file():
        return curves
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val_comm_rate"):
                for key in curves:
                    curves[key].append(float(row[key]))
    return curves


# ----- figures and the report ------------------------------------------------------------------
def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a clear error without it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "train.analyse draws its figures with matplotlib: pip install 'sketchenv[analyse]'"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    write_atomic(path, png.getvalue())


def plot_curves(curves: dict[str, dict[str, list[float]]], chance: float, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for name, c in curves.items():
        axes[0].plot([g / 1000 for g in c["games"]], c["val_comm_rate"], label=name)
        axes[1].plot([s / 60 for s in c["seconds"]], c["val_comm_rate"], label=name)
    for ax, xlabel in zip(axes, ("games played (thousands)", "wall time (min)"), strict=True):
        ax.axhline(chance, color="grey", ls=":", lw=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation communication rate")
    axes[1].legend(fontsize=8)
    save_figure(fig, path)


def plot_cross_play(matrix: Tensor, names: Sequence[str], path: Path) -> None:
    plt = pyplot()
    size = 1.2 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
    for (s, r), value in zip(
        torch.cartesian_prod(*(torch.arange(len(names)),) * 2).tolist(),
        matrix.flatten().tolist(),
        strict=True,
    ):
        ax.text(
            r,
            s,
            f"{value:.2f}",
            ha="center",
            va="center",
            color="black" if value > 0.5 else "white",
        )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("receiver")
    ax.set_ylabel("sender")
    save_figure(fig, path)


def plot_ablation(ablation: dict[str, list[float]], chance: float, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].bar(range(len(ablation["by_index"])), ablation["by_index"])
    axes[0].set_xlabel("stroke removed (index)")
    axes[0].set_ylabel("communication rate")
    axes[1].plot(ablation["most_ink_first"], marker=".", label="most ink first")
    axes[1].plot(ablation["least_ink_first"], marker=".", label="least ink first")
    axes[1].set_xlabel("strokes removed")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.axhline(chance, color="grey", ls=":", lw=1)
        ax.axhline(ablation["most_ink_first"][0], color="black", ls="--", lw=0.8)
        ax.set_ylim(0, 1)
    save_figure(fig, path)


def plot_drawing(stats: dict[str, Tensor], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].hist(stats["stroke_length"].numpy(), bins=40)
    axes[0].set_xlabel("stroke length (canvas widths)")
    axes[1].hist(stats["ink_per_sketch"].numpy(), bins=40)
    axes[1].set_xlabel("ink per sketch (fraction of the canvas)")
    shown = axes[2].imshow(stats["ink_map"].numpy(), cmap="magma")
    axes[2].set_title("where the ink goes (mean ink)", fontsize=9)
    axes[2].axis("off")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    save_figure(fig, path)


def plot_classes(sheet: Tensor, classes: Sequence[str], path: Path) -> None:
    plt = pyplot()
    height, width = sheet.shape[1:]
    fig, ax = plt.subplots(figsize=(width / 80, height / 80))
    ax.imshow(sheet.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    rows = len(classes)
    ax.set_yticks([(r + 0.5) * height / rows for r in range(rows)], classes)
    ax.set_xticks([])
    ax.set_title("mean sketch | image, sketch | ...", fontsize=9)
    save_figure(fig, path)


def summary(values: Tensor) -> dict[str, float]:
    values = values.float()
    return {
        "mean": values.mean().item(),
        "median": values.median().item(),
        "min": values.min().item(),
        "max": values.max().item(),
    }


def write_report(results: dict[str, Any], output: Path) -> None:
    """``report.md``: the numbers of ``results`` in tables, with the figures."""
    s = results["settings"]
    names = list(results["runs"])
    lines = [
        "# What the sketches say",
        "",
        f"{s['game']} game on the {s['split']} split of `{s['dataset']}`: {s['games']} games "
        f"({s['sampling']}; the dataset of seed {s['dataset_seed']}) per run with {s['n_candidates']} candidates (chance {s['chance']:.3f}), seed "
        f"{s['seed']}. Image distances in the features of `{s['features']}`.",
        "",
        "| run | comm. rate | topographic similarity, strokes (p) | the same, pixels (p) "
        "| recognisability | rate without the most inky stroke | mean stroke length | ink |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        t = r["topographic_similarity"]
        recog = r.get("recognisability")
        lines.append(
            f"| {name} | {r['comm_rate']:.3f} | {t['strokes']['rho']:.3f} "
            f"({t['strokes']['p_value']:.3g}) | {t['pixels']['rho']:.3f} "
            f"({t['pixels']['p_value']:.3g}) | {'-' if recog is None else f'{recog:.3f}'} "
            f"| {r['ablation']['most_ink_first'][1]:.3f} "
            f"| {r['drawing']['stroke_length']['mean']:.3f} "
            f"| {r['drawing']['ink_per_sketch']['mean']:.3f} |"
        )
    lines += [
        "",
        f"Topographic similarity: Spearman's rho between the pairwise distances of "
        f"{results['runs'][names[0]]['topographic_similarity']['sketches']} distinct images "
        "and of their sketches (strokes: Chamfer distance between the sets of segments, "
        "so stroke order does not matter; pixels: Euclidean), p from "
        f"{s['permutations']} random relabellings. Stroke lengths in canvas widths, ink as "
        "the fraction of the canvas inked.",
        "",
        "## Cross-play",
        "",
        "Communication rate of each run's sender (rows) with each run's receiver (columns), on "
        "the same games; the diagonal is self-play.",
        "",
        "| sender \\ receiver | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, row in zip(names, results["cross_play"], strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += [
        "",
        "![cross-play](cross-play.png)",
        "",
        "## Training curves",
        "",
        "![training curves](curves.png)",
        "",
    ]
    for name, r in results["runs"].items():
        lines += [
            f"## {name}",
            "",
            f"Checkpoint `{r['checkpoint']}`. {r['drawing']['visible_strokes']['mean']:.1f} of "
            f"{s['n_lines']} strokes per sketch ink at least one pixel ({s['stroke_format']} "
            "strokes).",
            "",
            f"![stroke ablation]({r['figures']['ablation']})",
            "",
            f"![drawing statistics]({r['figures']['drawing']})",
            "",
            "| class | games | recognisability |",
            "|---|---|---|",
        ]
        for cls, row in r["per_class"].items():
            recog = row.get("recognisability")
            lines.append(f"| {cls} | {row['games']} | {'-' if recog is None else f'{recog:.3f}'} |")
        lines += ["", f"![per-class sketches]({r['figures']['classes']})", ""]
    write_atomic(output / "report.md", "\n".join(lines).encode())


# ----- the analysis ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Analyse the runs and write the report; returns what ``results.json`` holds."""
    args = build_parser().parse_args(argv)
    least = {
        "games": 1,
        "topsim_sketches": 3,
        "permutations": 1,
        "per_class": 1,
        "n_distractors": 1,
    }
    for flag, minimum in least.items():
        value = getattr(args, flag)
        if value is not None and value < minimum:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")
    pyplot()  # fail before the work when matplotlib is missing
    started = time.perf_counter()
    device = select_device(args.device)
    runs = [load_run(path, device=device, which=args.checkpoint) for path in args.runs]
    check_same_game(runs)
    names = run_names(args.runs)

    # The same games for every run.
    args.batches = None
    game = evaluation_game(runs[0], args)
    classes = [str(c) for c in getattr(game.dataset, "classes", range(game.n_classes))]
    blocks = max(1, runs[0].config.batch_size // game.n_candidates)
    batches = [b.to(device) for b in evaluation_batches(game, args, blocks)[0]]
    n_games = sum(b.targets.numel() for b in batches)
    output = Path(args.output) if args.output else default_output(args, game.game)
    make_folder(output)
    features_spec = args.features or default_features(runs[0], game)
    distances = image_distances(features_spec, game, device)
    print(
        f"analysing {len(runs)} run(s) on {n_games} {game.game} games -> {output}",
        flush=True,
    )

    results: dict[str, Any] = {"runs": {}}
    chance = 1 / game.n_candidates
    bar = tqdm(total=3 * len(runs) + 1, desc="analyse", unit="part")
    for run, name in zip(runs, names, strict=True):
        bar.set_postfix_str(f"{name}: drawing")
        drawn = play_run(run, game, batches)
        recognised = recognise(make_recogniser(run, game, args.recogniser, device), drawn)
        numbers, sheet = per_class(drawn, classes, recognised, args.per_class)
        stats = analysis.drawing_statistics(game, drawn["strokes"], drawn["sketches"])
        bar.update()
        bar.set_postfix_str(f"{name}: stroke ablation")
        ablation = analysis.stroke_ablation(run.sender, run.receiver, game, batches)
        bar.update()
        bar.set_postfix_str(f"{name}: topographic similarity")
        topsim = topographic(
            game, drawn, distances, args.topsim_sketches, args.permutations, args.seed
        )
        bar.update()
        figures = {k: f"{k}-{name}.png" for k in ("ablation", "drawing", "classes")}
        plot_ablation(ablation, chance, output / figures["ablation"])
        plot_drawing(stats, output / figures["drawing"])
        plot_classes(sheet, classes, output / figures["classes"])
        results["runs"][name] = {
            "checkpoint": run.path,
            "comm_rate": ablation["most_ink_first"][0],  # nothing removed
            "recognisability": None if recognised is None else recognised.float().mean().item(),
            "topographic_similarity": topsim,
            "ablation": ablation,
            "per_class": numbers,
            "drawing": {k: summary(v) for k, v in stats.items() if k != "ink_map"},
            "figures": figures,
            "curves": training_curves(run),
        }
    bar.set_postfix_str("cross-play")
    matrix = analysis.cross_play(
        [r.sender for r in runs], [r.receiver for r in runs], game, batches
    )
    bar.update()
    bar.close()
    results["cross_play"] = matrix.tolist()
    plot_cross_play(matrix, names, output / "cross-play.png")
    plot_curves({n: r["curves"] for n, r in results["runs"].items()}, chance, output / "curves.png")
    results["settings"] = {
        "dataset": runs[0].config.dataset,
        "dataset_seed": runs[0].config.seed,
        "split": args.split,
        "game": game.game,
        "games": n_games,
        "sampling": "random" if args.games else "one pass",
        "n_candidates": game.n_candidates,
        "n_lines": game.n_lines,
        "stroke_format": str(game.stroke_format),
        "chance": chance,
        "seed": args.seed,
        "features": features_spec,
        "permutations": args.permutations,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_atomic(output / "results.json", json.dumps(results, indent=2).encode())
    write_report(results, output)
    print(
        f"wrote report.md, results.json and figures in {output} "
        f"({results['settings']['seconds']:.0f} s)"
    )
    return results


def run_names(paths: Sequence[str]) -> list[str]:
    """Short unique names: the run folder's name (a checkpoint's folder and file stem)."""
    names = []
    for path in map(Path, paths):
        name = f"{path.parent.name}-{path.stem}" if path.is_file() else path.name
        names.append(name if name not in names else f"{name}-{len(names)}")
    return names


def default_features(run: Run, game: SketchGame) -> str:
    return shipped_recogniser(run.config.dataset, game.image_size) or "pixels"


def default_output(args: argparse.Namespace, variant: str) -> Path:
    first = Path(args.runs[0])
    return (first.parent if first.is_file() else first) / f"analysis-{args.split}-{variant}"


if __name__ == "__main__":
    run_command(main, "python -m train.analyse")
