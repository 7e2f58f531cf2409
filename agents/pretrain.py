"""Pretraining a visual system: Barlow Twins, SimCLR or supervised, then a weights file.

    from agents.pretrain import PretrainConfig, pretrain
    metrics = pretrain(PretrainConfig(method="barlow", dataset="shapes", epochs=20))

Reads top to bottom: seeding, the data (the training split, kept in memory as 8 bits),
the backbone and the method's head, the optimiser, (resume), the loop (augmented views,
loss, step), and after every ``probe_every`` epochs and at the end the standard measures
of a representation (linear probe and k-NN on the validation split). The run folder
(``python -m train.pretrain`` is the command line) gets ``config.json``, ``metrics.csv``,
TensorBoard logs in ``tb/``, ``last.pt`` (everything needed to resume exactly) and
``weights.pt``, the weights file every consumer takes (``train.selfplay --weights``,
``--perceptual-net``, ``train.evaluate --recogniser``), all written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from agents.augment import AUGMENTATIONS
from agents.backbones import BACKBONES, make_backbone, save_weights
from agents.checkpoint import CheckpointError, save_checkpoint
from agents.config import dataclass_from_mapping, option
from agents.experiment import make_split
from agents.files import (
    CorruptFileError,
    load_torch,
    make_folder,
    remove_stray_temporaries,
    write_atomic,
)
from agents.methods import METHODS, make_method, pool
from agents.probe import extract_features, knn_accuracy, linear_probe_accuracy
from agents.runs import (
    THREADS,
    THREADS_HELP,
    epoch_bar,
    lr_factor,
    schedule_horizon,
    seeded_generator,
    set_threads,
    stop_on_signal,
    stop_reason_now,
    write_csv,
)
from agents.trainer import autocast, select_device
from sketchenv.datasets.cache import ImageCache, check_memory

FORMAT = "sketchenv-pretrain"
VERSION = 1
CSV_FIELDS = ("epoch", "step", "images", "seconds", "lr", "loss", "linear_probe", "knn")
# Keys that may change when a run is resumed (they do not change what is computed).
RESUMABLE = ("epochs", "max_steps", "time_budget", "device", "output", "log_every", "threads")


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (``python -m train.pretrain --help``)."""

    method: str = option("supervised", "objective", "method", choices=METHODS)
    dataset: str = option("shapes", "registry name or imagefolder:PATH", "data")
    data_root: str = option("./data", "where datasets live", "data")
    download: bool = option(False, "download the dataset if missing", "data")
    image_size: int | None = option(
        None, "pixels per side", "data", default_help="32 for small, the dataset's for vgg16"
    )
    drawings: float = option(
        0.0, "probability that a view is replaced by its line drawing", "method"
    )
    backbone: str = option("small", "network to pretrain", "model", choices=BACKBONES)
    backbone_width: int = option(32, "small backbone channels", "model")
    epochs: int = option(20, "passes over the training split", "optimisation")
    batch_size: int = option(64, "images per step", "optimisation")
    lr: float = option(2e-3, "AdamW learning rate (cosine decay to 0)", "optimisation")
    weight_decay: float = option(5e-4, "AdamW decoupled weight decay", "optimisation")
    warmup_steps: int = option(50, "linear warm-up steps", "optimisation")
    grad_clip: float | None = option(5.0, "max gradient norm, 0 = off", "optimisation")
    seed: int = option(0, "weights, data order, augmentations and dataset splits", "run")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", "run")
    amp: bool = option(True, "float16 autocast on CUDA", "run")
    threads: int = option(THREADS, THREADS_HELP, "run")
    output: str | None = option(
        None, "run directory", "run", default_help="runs/pretrain-<method>-<time>"
    )
    probe_every: int = option(5, "epochs between linear-probe/k-NN measures", "run")
    probe_images: int = option(10_000, "training images the probes fit on", "run")
    max_steps: int | None = option(None, "stop after this many steps in all", "run")
    time_budget: float | None = option(None, "stop after this many seconds (this process)", "run")
    log_every: int = option(20, "steps between TensorBoard points", "run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pretrain_config(values: dict[str, Any]) -> PretrainConfig:
    """A checked config from a mapping (keys may use ``-`` or ``_``)."""
    if "threads" in values and values["threads"] is None:  # files from before the default
        values = {**values, "threads": 0}  # of one thread: they ran on torch's default
    c = dataclass_from_mapping(PretrainConfig, values)
    checks = [
        (c.method in METHODS, f"method must be one of {METHODS}, got {c.method!r}"),
        (c.backbone in BACKBONES, f"backbone must be one of {BACKBONES}, got {c.backbone!r}"),
        (c.image_size is None or c.image_size >= 8, "image_size must be >= 8 (or unset)"),
        (c.backbone_width >= 1, "backbone_width must be >= 1"),
        (0 <= c.drawings <= 1, "drawings must be a probability in [0, 1]"),
        (c.epochs >= 1, "epochs must be >= 1"),
        (c.batch_size >= 2, "batch_size must be >= 2 (the methods compare images in a batch)"),
        (0 < c.lr < math.inf, "lr must be a finite number > 0"),
        (0 <= c.seed < 2**63, "seed must be >= 0 (and below 2**63)"),
        (c.weight_decay >= 0, "weight_decay must be >= 0"),
        (c.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (c.grad_clip is None or c.grad_clip >= 0, "grad_clip must be >= 0 (0 or unset: off)"),
        (c.threads >= 0, "threads must be >= 0 (0 = torch's default)"),
        (c.probe_every >= 1, "probe_every must be >= 1"),
        (c.probe_images >= 1, "probe_images must be >= 1"),
        (c.max_steps is None or c.max_steps >= 1, "max_steps must be >= 1 (or unset)"),
        (c.time_budget is None or c.time_budget > 0, "time_budget must be > 0 (or unset)"),
        (c.log_every >= 1, "log_every must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return c


def run_folder(config: PretrainConfig) -> Path:
    """``config.output``, or a new ``runs/pretrain-<method>-<date-time>``."""
    return Path(config.output or f"runs/pretrain-{config.method}-{datetime.now():%Y%m%d-%H%M%S}")


def load_dataset(config: PretrainConfig, split: str) -> ImageCache:
    """A split of the config's dataset at its image size, read through an 8-bit cache."""
    return ImageCache(make_split(config, split))


def read_pretrain_checkpoint(path: str | Path) -> dict[str, Any]:
    """A pretraining ``last.pt`` (a file or its run folder), checked."""
    file = Path(path) / "last.pt" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise CheckpointError(f"no pretraining checkpoint at {file} (give a run dir or last.pt)")
    try:
        payload = load_torch(file, "pretraining checkpoint")
    except CorruptFileError as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a pretraining checkpoint of python -m train.pretrain")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{file} has version {payload.get('version')}; this reads {VERSION}")
    payload["path"] = str(file)
    return payload


def resume_config(path: str | Path, changes: dict[str, Any]) -> tuple[PretrainConfig, dict]:
    """The config of the run at ``path`` with run-control ``changes``; refuses others. The
    run continues in the folder it is read from (even if it was moved or copied there)."""
    payload = read_pretrain_checkpoint(path)
    saved = payload["config"]
    changes = {"output": str(Path(payload["path"]).parent), **changes}
    changed = sorted(k for k, v in changes.items() if k not in RESUMABLE and saved.get(k) != v)
    if changed:
        raise ValueError(
            f"--resume continues {payload['path']} exactly, so {changed} cannot change; "
            f"only {list(RESUMABLE)} may. Start a new run to change the others."
        )
    return pretrain_config(saved | changes), payload


def probe(
    backbone: nn.Module, train: ImageCache, val: ImageCache, device: torch.device, n: int
) -> dict[str, float]:
    """Linear-probe and k-NN accuracy on ``val`` of features fitted on ``n`` training images."""

    def reader(cache: ImageCache, ids: Tensor) -> Tensor:
        return cache.images(ids).float().div_(255)

    n_train = min(n, len(train))
    train_ids = torch.linspace(0, len(train) - 1, n_train).long()  # spread over the split
    train_x = extract_features(backbone, lambda i: reader(train, train_ids[i]), n_train, device)
    val_x = extract_features(backbone, lambda i: reader(val, i), len(val), device)
    train_y, val_y = train.labels[train_ids], val.labels
    return {
        "linear_probe": linear_probe_accuracy(train_x, train_y, val_x, val_y),
        "knn": knn_accuracy(train_x, train_y, val_x, val_y),
    }


def pretrain(config: PretrainConfig, resumed: dict | None = None) -> dict[str, Any]:
    """Pretrain and write the run folder; returns the last probe metrics. ``resumed`` is
    a checkpoint from :func:`resume_config` to continue exactly."""
    start_time = time.monotonic()
    set_threads(config.threads)

    # Seeding and device: one --seed fixes the weights, data order and every view.
    torch.manual_seed(config.seed)
    device = select_device(config.device)
    use_amp = config.amp and device.type == "cuda"

    # Data: the training split for learning, the validation split for the probes.
    if config.image_size is not None:  # two views of every image in a batch, and the work
        check_memory(config.image_size, 2 * config.batch_size)
    train, val = load_dataset(config, "train"), load_dataset(config, "val")
    image_size = list(train.image_size)
    n_classes = int(max(train.labels.max(), val.labels.max())) + 1
    if len(train) < config.batch_size:
        raise ValueError(
            f"the training split has {len(train)} images, fewer than --batch-size "
            f"{config.batch_size}: lower the batch size"
        )
    steps_per_epoch = len(train) // config.batch_size  # whole batches only (BatchNorm heads)
    total_steps = schedule_horizon(config.epochs, steps_per_epoch, resumed)  # cosine
    augment = dataclasses.replace(AUGMENTATIONS[config.method], drawing_p=config.drawings)

    # The backbone (VGG16 sees ImageNet-normalised images, as its consumers will feed it)
    # and the method's head, trained together.
    normalisation_of = "imagenet" if config.backbone == "vgg16" else "none"
    backbone = make_backbone(
        config.backbone, normalisation_of, width=config.backbone_width, load=False
    ).to(device)
    feature_size = backbone.output_shape(tuple(image_size))[0]
    method = make_method(config.method, feature_size, n_classes).to(device)
    modules = nn.ModuleDict({"backbone": backbone, "method": method})
    optimizer = torch.optim.AdamW(
        modules.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, total_steps, "cosine")
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    # Resume: weights, optimiser, schedule, position in the data, history.
    epoch, batch_start, step, history, metrics = 0, 0, 0, [], {}
    loss_sum, n_steps = 0.0, 0  # of the epoch under way (restored with it)
    if resumed is not None:
        try:
            modules.load_state_dict(resumed["modules"])
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            scaler.load_state_dict(resumed["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{resumed['path']}: cannot restore its state: {err}") from err
        progress = resumed["progress"]
        epoch, batch_start, step = progress["epoch"], progress["batch"], progress["step"]
        history, metrics = resumed["history"], resumed["metrics"]
        loss_sum, n_steps = progress.get("loss_sum", 0.0), progress.get("n_steps", 0)

    # Output directory.
    out = run_folder(config)
    if resumed is None and (out / "last.pt").exists():
        raise FileExistsError(
            f"{out} already holds a run; continue it with --resume {out} or pick another --output"
        )
    make_folder(out)
    remove_stray_temporaries(out)  # of a write killed mid-way (the real files are whole)
    config = dataclasses.replace(config, output=str(out), image_size=image_size[0])
    write_atomic(
        out / "config.json",
        json.dumps(
            {
                "config": config.to_dict(),
                "derived": {
                    "train_images": len(train),
                    "val_images": len(val),
                    "classes": n_classes,
                    "steps_per_epoch": steps_per_epoch,
                    "augment": dataclasses.asdict(augment),
                    "device": str(device),
                    "torch": torch.__version__,
                },
            },
            indent=2,
        ).encode(),
    )
    writer = SummaryWriter(str(out / "tb"), purge_step=step if resumed else None)

    def checkpoint() -> None:
        save_checkpoint(
            out / "last.pt",
            {
                "format": FORMAT,
                "version": VERSION,
                "config": config.to_dict(),
                "modules": modules.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "progress": {
                    "epoch": epoch,
                    "batch": batch_start,
                    "step": step,
                    "schedule_steps": total_steps,
                    "loss_sum": loss_sum,
                    "n_steps": n_steps,
                },
                "history": history,
                "metrics": metrics,
            },
        )

    def measure(loss: float | None) -> dict[str, float]:
        """Probe the backbone, log it, and (after training steps) write ``weights.pt``."""
        scores = probe(backbone, train, val, device, config.probe_images)
        for key, value in scores.items():
            writer.add_scalar(f"val/{key}", value, step)
        row = {
            "epoch": epoch, "step": step, "images": step * config.batch_size,
            "seconds": round(time.monotonic() - start_time, 1),
            "lr": scheduler.get_last_lr()[0], "loss": loss, **scores,
        }  # fmt: skip
        history.append(row)
        write_csv(out / "metrics.csv", history, CSV_FIELDS)
        if step == 0:
            return scores
        save_weights(
            out / "weights.pt",
            backbone,
            {
                "method": config.method,
                "dataset": config.dataset,
                "image_size": image_size,
                "width": config.backbone_width if config.backbone == "small" else None,
                "epochs": epoch,
                "steps": step,
                "seed": config.seed,
                "probe": {**scores, "split": "val"},
                "classes": [str(c) for c in getattr(train.dataset, "classes", range(n_classes))],
                "config": config.to_dict(),
                "torch": str(torch.__version__),
                "created": datetime.now().isoformat(timespec="seconds"),
            },
            classifier=method.classifier.state_dict() if config.method == "supervised" else None,
        )
        return scores

    print(
        f"run dir {out} | {config.method} on {config.dataset} ({len(train)} images, "
        f"{image_size[0]} px) | device {device} | {steps_per_epoch} steps/epoch x "
        f"{config.epochs} epochs" + (f" | resuming at step {step}" if resumed else ""),
        flush=True,
    )
    if resumed is None:  # the baseline every method must beat: random weights
        baseline = measure(None)
        print(
            f"random weights: linear probe {baseline['linear_probe']:.3f} k-NN {baseline['knn']:.3f}"
        )
    stop_reason = None
    with stop_on_signal() as interrupted:

        def should_stop(after_step: bool = True) -> str | None:
            return stop_reason_now(interrupted, config, step, start_time, after_step)

        while epoch < config.epochs and (stop_reason := should_stop(after_step=False)) is None:
            modules.train()
            order = torch.randperm(len(train), generator=seeded_generator(config.seed, epoch))
            batches = order[: steps_per_epoch * config.batch_size].view(steps_per_epoch, -1)
            bar = epoch_bar(batches, batch_start, steps_per_epoch, epoch, config.epochs)
            for ids in bar:
                images = train.images(ids)
                if device.type == "cuda":
                    images = images.pin_memory()
                images = images.to(device, non_blocking=True).float().div_(255)
                labels = train.labels[ids].to(device)
                views_rng = seeded_generator(config.seed, 1 + epoch, step)  # same after resume
                views = [augment(images, views_rng) for _ in range(method.n_views)]
                with autocast(device, use_amp):
                    loss = method([pool(backbone(v)).float() for v in views], labels)
                if not math.isfinite(loss.item()):  # before the step: last.pt stays sound
                    raise FloatingPointError(
                        f"the {config.method} loss became {loss.item()} at step {step}: "
                        "lower --lr or keep --grad-clip on"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = nn.utils.clip_grad_norm_(
                    modules.parameters(), config.grad_clip or float("inf")
                )
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step, batch_start, n_steps = step + 1, batch_start + 1, n_steps + 1
                loss_sum += loss.item()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step % config.log_every == 0:
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/grad_norm", float(grad_norm), step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                if stop_reason := should_stop():
                    break
            bar.close()
            signalled = stop_reason in ("SIGINT", "SIGTERM")
            if signalled and batch_start < steps_per_epoch:
                checkpoint()  # interrupted mid-epoch: save at once, no probe
                print(f"stopped ({stop_reason}) at step {step}; resume with --resume {out}")
                break
            # The epoch is done (or stopped by a budget): probe when due, save.
            if batch_start >= steps_per_epoch:
                epoch, batch_start = epoch + 1, 0
            finished = epoch >= config.epochs or stop_reason is not None
            if finished or (batch_start == 0 and epoch % config.probe_every == 0):
                metrics = measure(loss_sum / max(1, n_steps))
                print(
                    f"epoch {epoch}/{config.epochs} step {step}: loss {loss_sum / max(1, n_steps):.4f}"
                    f" | linear probe {metrics['linear_probe']:.3f} k-NN {metrics['knn']:.3f}"
                    f" | {time.monotonic() - start_time:.0f}s"
                    + (f" | stopped: {stop_reason}" if stop_reason else ""),
                    flush=True,
                )
            if batch_start == 0:
                loss_sum, n_steps = 0.0, 0
            checkpoint()
            if signalled:
                print(f"resume with --resume {out}", flush=True)
            if stop_reason:
                break
    writer.close()
    if metrics:
        print(f"weights file {out / 'weights.pt'}", flush=True)
    return metrics
