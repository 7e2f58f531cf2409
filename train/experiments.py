"""Run the paper's experiments one table at a time and set the results beside the paper's.

    python -m train.experiments --list                       # tables and their runs
    python -m train.experiments table1 --scale smoke         # CPU: built-in data, minutes
    python -m train.experiments table1 --scale full          # the paper's setting (GPU)
    python -m train.experiments table2 --scale smoke --dataset imagefolder:photos/

Each table is a folder of ``experiments/`` holding one ``train.selfplay`` config file
per run and a ``table.toml`` with its title and the paper's numbers. For every run this
trains with ``train.selfplay`` (a finished run is skipped, an interrupted one resumed with
``--resume``), evaluates the test split with ``train.evaluate``, then writes into the
table's output folder (atomically): ``results.md`` (a Markdown table beside the paper's
numbers), ``results.json`` and ``sketches.png`` (one row of sketches per run, all drawn
from the same test images). Rerun the same command after an interruption to continue.

``--scale smoke`` keeps each run's experimental factor (game, perceptual loss and its
weights, model sizes, strokes, a visual system trained from scratch or pretrained by the
table itself) but swaps in the built-in ``shapes`` dataset (or ``--dataset``), the small
CNN instead of VGG16 (with the trainer's default visual system in place of weights that
must be downloaded: the one shipped for ``shapes`` at 32 px), and a CPU-sized budget;
:data:`SMOKE` lists every change.

A table may also pretrain visual systems: each ``pretrain-<name>.toml`` beside the run
configs is a ``train.pretrain`` config (listed under ``[pretrain.<name>]`` in
``table.toml``), trained first (skipped when finished, resumed when interrupted) into
``<output>/pretrain-<name>/``; a run config names its weights file as
``pretrain:<name>`` in ``weights`` or ``perceptual_net``. At smoke scale the pretraining
gets :data:`SMOKE_PRETRAIN`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from agents.backbones import default_weights, describe_weights, read_weights
from agents.checkpoint import CheckpointError, load_run, read_checkpoint
from agents.config import (
    LEGACY_VALUES,
    RESUMABLE_OVERRIDES,
    SelfPlayConfig,
    config_from_dict,
    default_sigma2,
    load_config_file,
)
from agents.files import make_folder, write_atomic
from agents.pretrain import RESUMABLE as PRETRAIN_RESUMABLE
from agents.pretrain import PretrainConfig, pretrain, pretrain_config, read_pretrain_checkpoint
from agents.pretrain import resume_config as resume_pretraining
from agents.runs import THREADS, THREADS_HELP
from agents.selfplay import fit, resume_config
from sketchenv.datasets import labels_of
from train.flags import EXPERIMENTS_DIR, run_command

TABLE_FILE = "table.toml"
SCALES = ("smoke", "full")
EVAL_SPLIT = "test"

_TRAINER = SelfPlayConfig()  # train.selfplay's defaults: tuned for a small CNN on a CPU
SMOKE: dict[str, Any] = {
    # Data: built in, nothing to download (--dataset swaps in e.g. imagefolder:PATH).
    "dataset": "shapes",
    "download": False,
    "image_size": 32,
    "sigma2": None,  # train.selfplay's default: the paper's stroke width in pixels
    # Agents: the small CNN instead of VGG16 (slow on a CPU). Weights that must be
    # downloaded (ImageNet, Stylized-ImageNet) become the trainer's default visual system
    # (see smoke_weights), so runs that differ only in them (Table 4, CelebA) become
    # identical at this scale; "none" and a table's own pretraining stay as they are.
    "backbone": "small",
    "backbone_width": _TRAINER.backbone_width,
    # Optimisation: train.selfplay's CPU defaults (the paper's lr 1e-4 with a plain dot
    # product learns too slowly for a budget of minutes).
    "score": _TRAINER.score,
    "score_scale": _TRAINER.score_scale,
    "lr": _TRAINER.lr,
    "lr_schedule": _TRAINER.lr_schedule,
    "warmup_steps": 50,
    "grad_clip": _TRAINER.grad_clip,
    "amp": _TRAINER.amp,
    # Budget: 2 epochs (~200 steps) per run: Table 1 took 13 minutes on a busy 2-core CPU.
    "epochs": 2,
    "val_games": 300,
}
"""Every option ``--scale smoke`` changes; the rest of each run's config is kept."""
SMOKE_PRETRAIN: dict[str, Any] = {
    "dataset": "shapes",
    "download": False,
    "image_size": 32,
    "backbone": "small",
    "backbone_width": _TRAINER.backbone_width,
    "epochs": 10,
    "batch_size": 64,
    "probe_every": 10,
}
"""Every pretraining option ``--scale smoke`` changes (about 2 minutes of supervised and
5 of Barlow Twins pretraining on one core)."""
PRETRAIN_PREFIX = "pretrain:"


@dataclasses.dataclass
class Experiment:
    """One run of a table: its config file, the values it sets and the paper's result."""

    name: str
    path: Path
    values: dict[str, Any]
    label: str
    paper: float | None = None  # communication rate in percent
    paper_std: float | None = None
    note: str = ""


@dataclasses.dataclass
class ExperimentTable:
    """A folder of ``experiments/``: runs in the order of its ``table.toml``, and the
    visual systems it pretrains (name -> ``train.pretrain`` config file)."""

    name: str
    title: str
    source: str
    runs: list[Experiment]
    pretraining: dict[str, Path] = dataclasses.field(default_factory=dict)


class StoppedEarly(Exception):
    """A run of the table stopped before the end of its budget (time budget or signal)."""


def list_tables(root: str | Path = EXPERIMENTS_DIR) -> list[str]:
    """Names of the tables under ``root`` (folders holding a ``table.toml``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"experiments folder {str(root)!r} not found (see --experiments)")
    return sorted(p.parent.name for p in root.glob(f"*/{TABLE_FILE}"))


def load_table(name: str, root: str | Path = EXPERIMENTS_DIR) -> ExperimentTable:
    """Read a table's ``table.toml`` and every run config it lists (checked to resolve)."""
    folder = Path(root) / name
    if not (folder / TABLE_FILE).is_file():
        known = ", ".join(list_tables(root)) or "none"
        raise ValueError(f"unknown table {name!r} in {root}: known tables are {known}")
    meta = load_config_file(folder / TABLE_FILE)
    entries = meta.get("runs", {})
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ValueError(
            f"{folder / TABLE_FILE}: runs must be tables, one [runs.<run>] per run, got {entries!r}"
        )
    for run_name, entry in entries.items():
        for key in ("paper", "paper_std"):
            if entry.get(key) is not None and not isinstance(entry[key], int | float):
                raise ValueError(
                    f"{folder / TABLE_FILE}: [runs.{run_name}] {key} must be a number "
                    f"(a percentage), got {entry[key]!r}"
                )
    pretraining = {name: folder / f"pretrain-{name}.toml" for name in meta.get("pretrain", {})}
    for name, path in pretraining.items():
        if not path.is_file():
            raise ValueError(f"{folder}: [pretrain.{name}] needs the config file {path.name}")
        pretrain_config(load_config_file(path))  # checked now, not after hours of training
    configs = {
        p.stem
        for p in folder.glob("*.toml")
        if p.name != TABLE_FILE and not p.name.startswith("pretrain-")
    }
    if set(entries) != configs:
        raise ValueError(
            f"{folder}: {TABLE_FILE} lists runs {sorted(entries)} but the config files are "
            f"{sorted(configs)}; give every <run>.toml a [runs.<run>] entry and vice versa"
        )
    runs = []
    for run_name, entry in entries.items():
        path = folder / f"{run_name}.toml"
        values = load_config_file(path)
        try:  # a pretrain:NAME network exists only once the table's pretraining ran
            pending = str(values.get("perceptual_net", "")).startswith(PRETRAIN_PREFIX)
            config_from_dict(values | ({"perceptual_net": "drawing"} if pending else {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path} is not a valid train.selfplay config: {err}") from err
        runs.append(
            Experiment(
                name=run_name,
                path=path,
                values=values,
                label=entry.get("label", run_name),
                paper=entry.get("paper"),
                paper_std=entry.get("paper_std"),
                note=entry.get("note", ""),
            )
        )
    return ExperimentTable(name, meta.get("title", name), meta.get("source", ""), runs, pretraining)


def resolve_config(
    run: Experiment,
    scale: str,
    output: str | Path,
    *,
    dataset: str | None = None,
    overrides: dict[str, Any] | None = None,
    pretrained: dict[str, str] | None = None,
) -> SelfPlayConfig:
    """The trainer config of ``run`` at ``scale`` writing to ``output``: the file's values,
    then :data:`SMOKE` (smoke scale), then ``dataset`` and ``overrides``; ``pretrained``
    maps the table's pretraining names to their weights files (for ``pretrain:NAME``)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    values = {k.replace("-", "_"): v for k, v in run.values.items()}
    if scale == "smoke":
        values |= SMOKE | smoke_weights(values)
    if dataset is not None:
        values["dataset"] = dataset
    values |= overrides or {}
    values["output"] = str(output)
    for key in ("weights", "perceptual_net"):
        value = values.get(key)
        if isinstance(value, str) and value.startswith(PRETRAIN_PREFIX):
            name = value.removeprefix(PRETRAIN_PREFIX)
            if pretrained is None or name not in pretrained:
                raise ValueError(
                    f"run {run.name!r}: {key} = {value!r} names no [pretrain.{name}] of its table"
                )
            values[key] = pretrained[name]
    try:
        return config_from_dict(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"run {run.name!r} at scale {scale!r}: {err}") from err


def smoke_weights(values: dict[str, Any]) -> dict[str, Any]:
    """At smoke scale, weights that must be downloaded give way to the trainer's default
    visual system (and its default freezing); ``none`` and ``pretrain:NAME`` stay."""
    weights = values.get("weights")
    if weights == "none" or (isinstance(weights, str) and weights.startswith(PRETRAIN_PREFIX)):
        return {}
    return {"weights": None, "freeze_backbone": None}


def resolve_pretrain_config(
    path: Path,
    scale: str,
    output: Path,
    *,
    dataset: str | None = None,
    threads: int | None = None,
) -> PretrainConfig:
    """The ``train.pretrain`` config of a table's ``pretrain-<name>.toml`` at ``scale``."""
    values = load_config_file(path)
    if scale == "smoke":
        values |= SMOKE_PRETRAIN
    if dataset is not None:
        values["dataset"] = dataset
    if threads is not None:
        values["threads"] = threads
    return pretrain_config(values | {"output": str(output)})


def pretrain_visual_system(config: PretrainConfig) -> str:
    """Pretrain (or skip when finished, resume when interrupted) into ``config.output``;
    returns the path of its ``weights.pt``."""
    out = Path(config.output)
    weights = out / "weights.pt"
    if (out / "last.pt").is_file():
        payload = read_pretrain_checkpoint(out)
        saved = pretrain_config(payload["config"])
        differ = [
            f.name
            for f in dataclasses.fields(PretrainConfig)
            if f.name not in (*PRETRAIN_RESUMABLE, "image_size")
            and getattr(saved, f.name) != getattr(config, f.name)
        ]
        if differ:
            raise ValueError(
                f"{out} holds a pretraining run with other settings ({', '.join(differ)} "
                "differ); use another --output or delete that folder"
            )
        if payload["progress"]["epoch"] < config.epochs:
            changes = {k: getattr(config, k) for k in PRETRAIN_RESUMABLE}
            pretrain(*resume_pretraining(out, changes))
    else:
        pretrain(config)
    if read_pretrain_checkpoint(out)["progress"]["epoch"] < config.epochs:
        raise StoppedEarly(
            f"pretraining {out} stopped before the end of its budget; rerun the same "
            "command to resume it"
        )
    return str(weights)


def run_status(config: SelfPlayConfig) -> str:
    """``"new"``, ``"interrupted"`` or ``"finished"`` for the run directory of ``config``.

    Raises ``ValueError`` when the directory holds a run of another config (other than the
    options a resume may change, and the defaults the trainer fills in), so results never
    mix two settings.
    """
    out = Path(config.output)
    if not (out / "last.pt").is_file():
        return "new"
    try:
        payload = read_checkpoint(out, which="last")
    except CheckpointError as err:
        raise ValueError(f"{err}; delete {out} to start the run again") from err
    saved, wanted = payload["config"], _with_defaults(config.to_dict())
    differ = [
        k
        for k, v in wanted.items()
        if k not in (*RESUMABLE_OVERRIDES, *LEGACY_VALUES) and v is not None and saved.get(k) != v
    ]
    if differ:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(differ)} differ); "
            "use another --output or delete that folder"
        )
    progress = payload.get("progress", {})
    done = progress.get("epoch", 0) >= config.epochs or (
        config.max_steps is not None and progress.get("step", 0) >= config.max_steps
    )
    return "finished" if done else "interrupted"


def _with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the defaults train.selfplay fills into the config it saves (weights,
    freezing, and sigma2 when the image size is known); defaults that depend on the
    dataset's own image size stay None."""
    values = dict(values)
    if values["image_size"] is None and values["backbone"] == "small":
        values["image_size"] = 32  # make_game's default for the small CNN
    if values["weights"] is None:
        values["weights"] = default_weights(
            values["backbone"], values["dataset"], values["image_size"], values["backbone_width"]
        )
    if values["freeze_backbone"] is None:
        values["freeze_backbone"] = values["weights"] != "none"
    if values["sigma2"] is None and values["image_size"] is not None:
        values["sigma2"] = default_sigma2(values["image_size"])
    return values


def train(config: SelfPlayConfig) -> str:
    """Start or resume the run with :func:`agents.selfplay.fit`; returns its status afterwards."""
    status = run_status(config)
    if status == "finished":
        return status
    if status == "new":
        fit(config)
    else:  # resume exactly; only the options a resume may change are passed on
        changes = {k: getattr(config, k) for k in RESUMABLE_OVERRIDES}
        saved, payload = resume_config(config.output, changes)
        fit(saved, resumed=payload)
    return run_status(config)


def evaluate(config: SelfPlayConfig, games: int | None = None) -> dict[str, Any]:
    """Evaluate the run's best checkpoint on the test split with ``train.evaluate`` (one
    pass over the split, or ``games`` random games); reuses the result until the
    checkpoint changes."""
    from train import evaluate as evaluator

    out = Path(config.output)
    folder = out / (f"eval-{EVAL_SPLIT}" + ("" if games is None else f"-{games}games"))
    metrics = folder / "metrics.json"
    checkpoint = out / "best.pt" if (out / "best.pt").is_file() else out / "last.pt"
    if _mtime(metrics) > _mtime(checkpoint):
        return json.loads(metrics.read_text())
    argv = [str(out), "--split", EVAL_SPLIT, "--output", str(folder)]
    return evaluator.main(argv + ([] if games is None else ["--games", str(games)]))


def run_table(
    name: str,
    scale: str = "smoke",
    output: str | Path | None = None,
    *,
    dataset: str | None = None,
    overrides: dict[str, Any] | None = None,
    only: Sequence[str] | None = None,
    eval_games: int | None = None,
    threads: int | None = None,
    root: str | Path = EXPERIMENTS_DIR,
) -> Path:
    """Train (or skip/resume) and evaluate a table's runs, then write its results.

    Returns the table's output folder. Stops with ``StoppedEarly`` when a run ends before
    its budget (Ctrl-C, SIGTERM): rerunning resumes it. ``threads`` sets every run's torch
    CPU threads (default: each config's own, :data:`agents.runs.THREADS` unless it says).
    """
    table = load_table(name, root)
    if eval_games is not None and eval_games < 1:  # checked before hours of training
        raise ValueError(f"--eval-games must be >= 1, got {eval_games}")
    if threads is not None:
        if threads < 0:
            raise ValueError(f"--threads must be >= 0 (0 = torch's default), got {threads}")
        overrides = {**(overrides or {}), "threads": threads}
    runs = _select(table.runs, only)
    folder = make_folder(make_folder(output or f"runs/experiments/{scale}") / name)
    pretrained = {}
    for i, (system, path) in enumerate(table.pretraining.items(), 1):
        config = resolve_pretrain_config(
            path, scale, folder / f"pretrain-{system}", dataset=dataset, threads=threads
        )
        print(f"[pretrain {i}/{len(table.pretraining)}] {name}/{system} -> {config.output}")
        pretrained[system] = pretrain_visual_system(config)
    configs = {
        run.name: resolve_config(
            run,
            scale,
            folder / run.name,
            dataset=dataset,
            overrides=overrides,
            pretrained=pretrained,
        )
        for run in runs
    }
    rows: dict[str, dict[str, Any]] = {}
    for i, run in enumerate(runs, 1):
        config = configs[run.name]
        print(f"[{i}/{len(runs)}] {name}/{run.name} ({run_status(config)}) -> {config.output}")
        if train(config) != "finished":
            raise StoppedEarly(
                f"{name}/{run.name} stopped before the end of its budget; rerun the same "
                "command to resume it"
            )
        rows[run.name] = summarise(config, evaluate(config, eval_games))
    results_md = results_markdown(table, runs, configs, rows, scale, pretrained)
    write_atomic(folder / "results.md", results_md)
    summary = {
        "table": name,
        "scale": scale,
        "runs": {
            run.name: {
                "label": run.label,
                "paper": run.paper,
                "paper_std": run.paper_std,
                "config": configs[run.name].to_dict(),
                "results": rows[run.name],
            }
            for run in runs
        },
    }
    write_atomic(folder / "results.json", json.dumps(summary, indent=2, default=str))
    save_sketch_figure(
        [(run.name, Path(configs[run.name].output)) for run in runs], folder / "sketches.png"
    )
    print(results_md)
    print(f"results in {folder}/results.md, sketches in {folder}/sketches.png")
    return folder


def summarise(config: SelfPlayConfig, evaluation: dict[str, Any]) -> dict[str, Any]:
    """One results row: the evaluation's rates plus what was trained (from ``last.pt``)."""
    payload = read_checkpoint(config.output, which="last")
    progress = payload.get("progress", {})
    return {
        "stroke_format": payload["game"].get("stroke_format", "line"),
        "drawing_cost": payload["config"].get("drawing_cost", 0.0),
        "strokes_used": evaluation.get("strokes_used", {}).get("mean"),
        "seconds_per_step": seconds_per_step(Path(config.output)),
        "comm_rate": evaluation.get("comm_rate_mean", evaluation.get("comm_rate")),
        "comm_rate_std": evaluation.get("comm_rate_std"),
        "class_rate": evaluation.get("class_rate"),
        "games": evaluation.get("games"),
        "chance": 1 / payload["game"]["n_candidates"],
        "steps": progress.get("step"),
        "epochs": progress.get("epoch"),
        "recognisability": evaluation.get("recognisability"),
        "recognisability_chance": evaluation.get("recognisability_chance"),
        "visual_system": describe_visual_system(payload["config"]),
    }


def seconds_per_step(run_dir: Path) -> float | None:
    """Wall time per training step of a run, validation included (its ``metrics.csv``)."""
    try:
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        return float(rows[-1]["seconds"]) / int(rows[-1]["step"])
    except (OSError, KeyError, ValueError, IndexError, ZeroDivisionError):
        return None


def describe_visual_system(config: dict[str, Any]) -> str:
    """How a run's backbone was made, for a results table: from scratch, or the weights
    (a pretraining run folder's name, a shipped name) and whether they were frozen."""
    weights = config.get("weights") or "none"
    if weights == "none":
        return "from scratch"
    path = Path(weights)
    name = path.parent.name if path.name == "weights.pt" else weights
    return f"{name}, {'frozen' if config.get('freeze_backbone') else 'fine-tuned'}"


def results_markdown(
    table: ExperimentTable,
    runs: Sequence[Experiment],
    configs: dict[str, SelfPlayConfig],
    rows: dict[str, dict[str, Any]],
    scale: str,
    pretrained: dict[str, str] | None = None,
) -> str:
    """A Markdown table: one row per run (see :func:`summarise`), the paper's
    communication rate beside ours; ``pretrained`` (name -> weights file) adds a line on
    what each of the table's pretrained visual systems learned."""
    first = configs[runs[0].name]
    epochs = f"{first.epochs} epoch{'s' if first.epochs != 1 else ''}"
    filled = _with_defaults(first.to_dict())
    weights = filled["weights"]
    systems = len({rows[run.name].get("visual_system") for run in runs}) > 1
    if systems:
        visual_system = "the visual system of each row"
    elif weights == "none":
        visual_system = "from scratch"
    else:
        visual_system = f"{weights} weights, " + (
            "frozen" if filled["freeze_backbone"] else "fine-tuned"
        )
    backbone = f"backbone `{first.backbone}` ({visual_system})"
    if scale == "smoke":
        lines = [
            f"## {table.title}: smoke scale",
            "",
            f"**Smoke scale** (`--scale smoke`): dataset `{first.dataset}` at "
            f"{first.image_size} px, {backbone}, {epochs} on a CPU instead of the paper's "
            "setting. It checks that the whole pipeline works; it does not reproduce the "
            "paper's numbers (that is `--scale full`).",
            "",
        ]
    else:
        lines = [
            f"## {table.title}",
            "",
            f"Full scale: dataset `{first.dataset}` at {first.image_size} px, {backbone}, "
            f"{epochs}.",
            "",
        ]
    recognised = any(rows[run.name].get("recognisability") is not None for run in runs)
    drawing = any(
        rows[run.name].get("stroke_format", "line") != "line" or rows[run.name].get("drawing_cost")
        for run in runs
    )
    head = ["run", "setting", "game", "chance", "paper", "ours", "ours, class rate"]
    head += ["visual system"] * systems + ["recognisability (chance)"] * recognised
    head += ["strokes", "drawing cost", "strokes used", "s / step"] * drawing
    lines += ["| " + " | ".join([*head, "trained"]) + " |", "|---" * (len(head) + 1) + "|"]
    for run in runs:
        row = rows[run.name]
        paper = "n/a" if run.paper is None else f"{run.paper:g} %"
        if run.paper is not None and run.paper_std is not None:
            paper = f"{run.paper:g} ± {run.paper_std:g} %"
        cells = [
            run.name,
            run.label,
            configs[run.name].game,
            _percent(row.get("chance")),
            paper,
            _percent(row.get("comm_rate"), row.get("comm_rate_std")),
            _percent(row.get("class_rate")),
        ]
        cells += [str(row.get("visual_system"))] * systems
        if recognised:
            chance = row.get("recognisability_chance")
            cells.append(f"{_percent(row.get('recognisability'))} ({_percent(chance)})")
        if drawing:
            used, step = row.get("strokes_used"), row.get("seconds_per_step")
            cells += [
                f"`{row.get('stroke_format', 'line')}`",
                f"{row.get('drawing_cost', 0.0):g}",
                "?" if used is None else f"{used:.1f} of {configs[run.name].lines}",
                "?" if step is None else f"{step:.2f}",
            ]
        cells.append(f"{row.get('steps', '?')} steps, {row.get('epochs', '?')} epochs")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {run.name}: {run.note}" for run in runs if run.note]
    for name, path in (pretrained or {}).items():
        _, info = read_weights(path)
        notes.append(f"- visual system `pretrain-{name}`: {describe_weights(info)}")
    lines += ["", *notes, *([""] if notes else [])]
    lines += [
        f"Paper: {table.source}. Ours: communication rate on the {EVAL_SPLIT} split "
        "(mean ± std over evaluation batches) of each run's best checkpoint; chance is "
        "1 / candidates.",
        "",
    ]
    return "\n".join(lines)


@torch.no_grad()
def save_sketch_figure(
    runs: Sequence[tuple[str, Path]], path: str | Path, n_images: int = 8, cell: int = 64
) -> None:
    """One PNG: a row of test images (one per class, as far as there are classes), then one
    row per run of its sender's sketches of those same images."""
    rows: list[tuple[str, torch.Tensor]] = []
    indices: list[int] = []
    for name, run_dir in runs:
        run = load_run(run_dir)
        game = run.make_game(EVAL_SPLIT)
        if not rows:
            indices = _one_per_class(labels_of(game.dataset), n_images)
        images = torch.stack([game.dataset[i][0] for i in indices])
        if not rows:
            rows.append((f"{EVAL_SPLIT} images", images))
        rows.append((name, game.render(run.sender(images)).clamp(0, 1)))
    font = ImageFont.load_default()
    label_width = 8 + max(int(font.getlength(label)) for label, _ in rows)
    size = (label_width + len(indices) * cell, len(rows) * cell)
    figure = Image.new("RGB", size, (225, 225, 225))
    draw = ImageDraw.Draw(figure)
    for r, (label, batch) in enumerate(rows):
        draw.text((4, r * cell + cell // 2), label, fill="black", font=font, anchor="lm")
        for c, image in enumerate(batch):
            pixels = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(pixels).resize((cell - 2, cell - 2), Image.Resampling.BILINEAR)
            figure.paste(tile, (label_width + c * cell + 1, r * cell + 1))
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    write_atomic(Path(path), buffer.getvalue())


def _one_per_class(labels: Sequence[int], n: int) -> list[int]:
    """Indices of the first item of each class in label order, then more, up to ``n``."""
    first: dict[int, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    picked = [first[c] for c in sorted(first)][:n]
    extra = (i for i in range(len(labels)) if i not in picked)
    return picked + [next(extra) for _ in range(min(n, len(labels)) - len(picked))]


def _select(runs: list[Experiment], only: Sequence[str] | None) -> list[Experiment]:
    if not only:
        return runs
    names = [r.name for r in runs]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; this table has {names}")
    return [r for r in runs if r.name in only]


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else -1.0


def _percent(rate: float | None, std: float | None = None) -> str:
    if rate is None:
        return "?"
    return f"{100 * rate:.1f} %" if std is None else f"{100 * rate:.1f} ± {100 * std:.1f} %"


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON (numbers, true, null, [..]) or a string."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. --set device=cuda), got {item!r}")
        try:
            values[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            values[key.replace("-", "_")] = value
    return values


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Options for every run from ``--data-root``, ``--download`` and ``--set``."""
    values: dict[str, Any] = {}
    if args.data_root is not None:
        values["data_root"] = args.data_root
    if args.download:
        values["download"] = True
    return values | _parse_set(args.set)


def describe_tables(root: str | Path = EXPERIMENTS_DIR) -> str:
    """The ``--list`` text: each table, its runs and the paper's rate."""
    lines = []
    if not list_tables(root):
        return f"no tables in {root} (a table is a folder holding {TABLE_FILE})"
    for name in list_tables(root):
        table = load_table(name, root)
        lines.append(f"{name}: {table.title}")
        for run in table.runs:
            paper = "" if run.paper is None else f"  [paper {run.paper:g} %]"
            lines.append(f"  {run.name:<36} {run.label}{paper}")
        for system, path in table.pretraining.items():
            lines.append(f"  {'(pretrains) ' + system:<36} {path.name}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.experiments",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="smoke scale changes: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()),
    )
    p.add_argument("table", nargs="?", help="table to run (see --list)")
    p.add_argument("--list", action="store_true", help="show the tables and their runs")
    p.add_argument("--scale", choices=SCALES, default="smoke", help="[smoke]")
    p.add_argument("--output", help="output root [runs/experiments/<scale>]")
    p.add_argument("--dataset", help="replace every run's dataset (e.g. imagefolder:PATH)")
    p.add_argument("--data-root", help="where datasets live (every run) [./data]")
    p.add_argument("--download", action="store_true", help="download missing datasets")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="only these runs of the table")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a train.selfplay option in every run (e.g. device=cuda:1, epochs=5)",
    )
    p.add_argument(
        "--eval-games", type=int, help="random test games per run [one pass over the test split]"
    )
    p.add_argument(
        "--threads", type=int, help=f"{THREADS_HELP} [each run's config, default {THREADS}]"
    )
    p.add_argument("--experiments", default=str(EXPERIMENTS_DIR), help="config folder")
    return p


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Command-line entry point; returns the table's output folder (None with --list)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list:
            print(describe_tables(args.experiments))
            return None
        if args.table is None:
            parser.error("name a table to run, or --list to see them")
        return run_table(
            args.table,
            args.scale,
            args.output,
            dataset=args.dataset,
            overrides=_overrides(args),
            only=args.runs,
            eval_games=args.eval_games,
            threads=args.threads,
            root=args.experiments,
        )
    except StoppedEarly as err:  # a budget or a signal: not an error, but not done either
        sys.stdout.flush()
        parser.exit(1, f"stopped: {err}\n")


if __name__ == "__main__":
    run_command(main, "python -m train.experiments")
