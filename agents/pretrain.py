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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from agents import distributed
from agents.augment import AUGMENTATIONS
from agents.backbones import BACKBONES, make_backbone, save_weights
from agents.callbacks import Callback, Checkpoints, MetricsCSV, ProgressBar, stopping_rules
from agents.checkpoint import CheckpointError
from agents.config import dataclass_from_mapping, option
from agents.distributed import Processes
from agents.experiment import make_split
from agents.files import (
    CorruptFileError,
    load_torch,
    make_folder,
    remove_stray_temporaries,
    write_atomic,
)
from agents.loop import Loop
from agents.methods import METHODS, make_method, pool
from agents.probe import extract_features, knn_accuracy, linear_probe_accuracy
from agents.runs import (
    THREADS,
    THREADS_HELP,
    lr_factor,
    schedule_horizon,
    seeded_generator,
    set_threads,
)
from agents.trainer import autocast
from sketchenv.datasets.cache import ImageCache, check_memory
from sketchenv.game import share_blocks

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


class PretrainLoss(nn.Module):
    """The backbone and the method's head as one module (what DDP wraps). Each process
    encodes its share of a batch's views; the pooled features of all processes are
    gathered (gradients flow back to each share) and every process computes the
    method's loss on the whole batch, so batch-level objectives (Barlow Twins'
    correlations, SimCLR's negatives) and the heads' BatchNorm see the global batch, as
    with one process. The backbones use GroupNorm: per image, nothing to synchronise."""

    def __init__(self, backbone: nn.Module, method: nn.Module, processes: Processes) -> None:
        super().__init__()
        self.backbone, self.method, self.processes = backbone, method, processes

    def forward(self, views: list[Tensor], labels: Tensor) -> Tensor:
        share = share_blocks(len(labels), self.processes.rank, self.processes.world)
        features = [
            self.processes.gather_rows(pool(self.backbone(v[share])).float(), len(labels))
            for v in views
        ]
        return self.method(features, labels)


class Pretraining(Loop):
    """One pretraining run from ``config`` (and ``resumed``, a checkpoint from
    :func:`resume_config`, to continue it exactly); :meth:`fit` trains it (the loop of
    :class:`agents.loop.Loop`, as self-play's), probing every ``probe_every`` epochs."""

    def __init__(
        self,
        config: PretrainConfig,
        callbacks: Sequence[Callback] | None = None,
        resumed: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.resumed = resumed
        set_threads(config.threads)

        # Processes, seeding and device: one --seed fixes the weights, data order and views.
        self.processes, self.device = distributed.start(config.device)
        torch.manual_seed(config.seed)
        self.amp = config.amp and self.device.type == "cuda"

        # Data: the training split for learning, the validation split for the probes.
        if config.image_size is not None:  # two views of every image in a batch, and the work
            check_memory(config.image_size, 2 * config.batch_size)
        self.train_split, self.val_split = (
            load_dataset(config, "train"),
            load_dataset(config, "val"),
        )
        train = self.train_split
        self.image_size = list(train.image_size)
        self.n_classes = int(max(train.labels.max(), self.val_split.labels.max())) + 1
        if len(train) < config.batch_size:
            raise ValueError(
                f"the training split has {len(train)} images, fewer than --batch-size "
                f"{config.batch_size}: lower the batch size"
            )
        self.steps_per_epoch = len(train) // config.batch_size  # whole batches (BatchNorm heads)
        self.total_steps = schedule_horizon(config.epochs, self.steps_per_epoch, resumed)
        self.augment = dataclasses.replace(AUGMENTATIONS[config.method], drawing_p=config.drawings)

        # The backbone (VGG16 sees ImageNet-normalised images, as its consumers will feed
        # it) and the method's head, trained together.
        normalisation_of = "imagenet" if config.backbone == "vgg16" else "none"
        self.backbone = make_backbone(
            config.backbone, normalisation_of, width=config.backbone_width, load=False
        ).to(self.device)
        feature_size = self.backbone.output_shape(tuple(self.image_size))[0]
        self.method = make_method(config.method, feature_size, self.n_classes).to(self.device)
        self.modules = nn.ModuleDict({"backbone": self.backbone, "method": self.method})
        self.optimizer = torch.optim.AdamW(
            self.modules.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.warmup_steps, self.total_steps, "cosine")
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)

        # Where the run is (restored on resume), then DDP over the processes.
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self.sums = {"loss": 0.0}
        if resumed is not None:
            self._restore(resumed)
        model: nn.Module = PretrainLoss(self.backbone, self.method, self.processes)
        if self.processes.world > 1:
            cuda = self.device.type == "cuda"
            model = DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)
        self.model = model

        self.out = run_folder(config)
        self.config = dataclasses.replace(
            config, output=str(self.out), image_size=self.image_size[0]
        )
        self.derived = {
            "train_images": len(train),
            "val_images": len(self.val_split),
            "classes": self.n_classes,
            "steps_per_epoch": self.steps_per_epoch,
            "augment": dataclasses.asdict(self.augment),
            "device": str(self.device),
            "processes": self.processes.world,
            "torch": torch.__version__,
        }
        if callbacks is None:
            callbacks = default_callbacks(self.config, self.processes.main)
        self.callbacks = [*stopping_rules(self.config), *callbacks]

    def _restore(self, resumed: dict[str, Any]) -> None:
        """Weights, optimiser, schedule, position in the data, history, running sums."""
        try:
            self.modules.load_state_dict(resumed["modules"])
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.scheduler.load_state_dict(resumed["scheduler"])
            self.scaler.load_state_dict(resumed["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{resumed['path']}: cannot restore its state: {err}") from err
        progress = resumed["progress"]
        self.epoch, self.batch, self.step = progress["epoch"], progress["batch"], progress["step"]
        self.history, self.metrics = resumed["history"], resumed["metrics"]
        self.sums = {"loss": progress.get("loss_sum", 0.0)}
        self.n_steps = progress.get("n_steps", 0)

    def state(self) -> dict[str, Any]:
        """Everything ``last.pt`` holds: weights, optimiser, schedule and position."""
        return {
            "format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
            "modules": self.modules.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "progress": {
                "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "schedule_steps": self.total_steps, "loss_sum": self.sums["loss"],
                "n_steps": self.n_steps,
            },
            "history": self.history, "metrics": self.metrics,
        }  # fmt: skip

    def begin(self) -> None:
        """A new run first probes its random weights: the baseline every method must beat."""
        if self.resumed is None and self.step == 0:
            self.validate(None)

    def epoch_batches(self) -> Tensor:
        """The epoch's batches of image ids (a seeded order; the same for every process)."""
        self.model.train()
        order = torch.randperm(
            len(self.train_split), generator=seeded_generator(self.config.seed, self.epoch)
        )
        return order[: self.steps_per_epoch * self.config.batch_size].view(self.steps_per_epoch, -1)

    def train_step(self, ids: Tensor, index: int) -> dict[str, float]:
        """Views of the batch (each process makes them all, then encodes its share), the
        method's loss, one AdamW step."""
        c, device = self.config, self.device
        images = self.train_split.images(ids)
        if device.type == "cuda":
            images = images.pin_memory()
        images = images.to(device, non_blocking=True).float().div_(255)
        labels = self.train_split.labels[ids].to(device)
        views_rng = seeded_generator(c.seed, 1 + self.epoch, self.step)  # the same after resume
        views = [self.augment(images, views_rng) for _ in range(self.method.n_views)]
        with autocast(device, self.amp):
            loss = self.model(views, labels)
        if not math.isfinite(loss.item()):  # before the step: last.pt stays sound
            raise FloatingPointError(
                f"the {c.method} loss became {loss.item()} at step {self.step}: "
                "lower --lr or keep --grad-clip on"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.modules.parameters(), c.grad_clip or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": loss.item(), "grad_norm": float(grad_norm)}

    def end_epoch(self) -> None:
        """Probe when due (every ``probe_every`` epochs and at the end), then the hooks."""
        finished = self.epoch >= self.config.epochs or self.stop_reason is not None
        due = self.batch == 0 and self.epoch % self.config.probe_every == 0
        loss = self.epoch_means()["loss"]
        row = self.validate(loss) if finished or due else None
        self.call("on_epoch_end", row)

    def validate(self, loss: float | None) -> dict[str, Any]:
        """Linear probe and k-NN on the validation split (the main process; the others
        wait at their next step), a history row, and the validation hooks."""
        scores = {}
        if self.processes.main:
            scores = probe(
                self.backbone,
                self.train_split,
                self.val_split,
                self.device,
                self.config.probe_images,
            )
        if self.step > 0:  # the random weights' baseline is history, not a result
            self.metrics = scores
        row = {
            "epoch": self.epoch, "step": self.step, "images": self.step * self.config.batch_size,
            "seconds": round(time.monotonic() - self.start_time, 1),
            "lr": self.scheduler.get_last_lr()[0], "loss": loss, **scores,
        }  # fmt: skip
        self.history.append(row)
        self.call("on_validation_end", row, None)
        return row


def pretrain(
    config: PretrainConfig,
    resumed: dict | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> dict[str, Any]:
    """Pretrain and write the run folder; returns the last probe metrics (linear probe and
    k-NN accuracy, on the main process). ``resumed`` is
    a checkpoint from :func:`resume_config` to continue exactly; ``callbacks`` replace
    :func:`default_callbacks`."""
    return Pretraining(config, callbacks, resumed).fit()


# ----- what a pretraining run does besides training (see agents.callbacks) --------------------
class PretrainFolder(Callback):
    """Makes the run folder and writes ``config.json``; refuses to start over a run."""

    def on_fit_start(self, trainer: Pretraining) -> None:
        out = trainer.out
        if trainer.resumed is None and (out / "last.pt").exists():
            raise FileExistsError(
                f"{out} already holds a run; continue it with --resume {out} or pick another --output"
            )
        make_folder(out)
        remove_stray_temporaries(out)  # of a write killed mid-way (the real files are whole)
        info = {"config": trainer.config.to_dict(), "derived": trainer.derived}
        write_atomic(out / "config.json", json.dumps(info, indent=2).encode())


class WeightsFile(Callback):
    """``weights.pt`` at every probe after training steps: the backbone and what made it."""

    def on_validation_end(self, trainer: Pretraining, row: dict, first: None) -> None:
        if trainer.step == 0:
            return
        c, train = trainer.config, trainer.train_split
        classes = getattr(train.dataset, "classes", range(trainer.n_classes))
        save_weights(
            trainer.out / "weights.pt",
            trainer.backbone,
            {
                "method": c.method,
                "dataset": c.dataset,
                "image_size": trainer.image_size,
                "width": c.backbone_width if c.backbone == "small" else None,
                "epochs": trainer.epoch,
                "steps": trainer.step,
                "seed": c.seed,
                "probe": {**trainer.metrics, "split": "val"},
                "classes": [str(name) for name in classes],
                "config": c.to_dict(),
                "torch": str(torch.__version__),
                "created": datetime.now().isoformat(timespec="seconds"),
            },
            classifier=trainer.method.classifier.state_dict() if c.method == "supervised" else None,
        )


class PretrainLog(ProgressBar):
    """TensorBoard (``tb/``: loss, gradient norm and LR every ``log_every`` steps, the
    probes), a progress bar per epoch and one line per probe."""

    def __init__(self, log_every: int) -> None:
        super().__init__()
        self.log_every = log_every
        self.writer: SummaryWriter | None = None

    def on_fit_start(self, trainer: Pretraining) -> None:
        c, purge = trainer.config, trainer.step if trainer.resumed else None
        self.writer = SummaryWriter(str(trainer.out / "tb"), purge_step=purge)
        print(
            f"run dir {trainer.out} | {c.method} on {c.dataset} ({len(trainer.train_split)} "
            f"images, {trainer.image_size[0]} px) | device {trainer.device} | "
            f"{trainer.processes.world} process(es) | {trainer.steps_per_epoch} steps/epoch x "
            f"{c.epochs} epochs"
            + (f" | resuming at step {trainer.step}" if trainer.resumed else ""),
            flush=True,
        )

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{stats['loss']:.3f}"}

    def on_step_end(self, trainer: Pretraining, stats: dict[str, float]) -> None:
        super().on_step_end(trainer, stats)
        if trainer.step % self.log_every == 0:
            for key, value in stats.items():
                self.writer.add_scalar(f"train/{key}", value, trainer.step)
            self.writer.add_scalar("train/lr", trainer.scheduler.get_last_lr()[0], trainer.step)

    def on_validation_end(self, trainer: Pretraining, row: dict, first: None) -> None:
        self.close()
        for key in ("linear_probe", "knn"):
            self.writer.add_scalar(f"val/{key}", row[key], trainer.step)
        scores = f"linear probe {row['linear_probe']:.3f} k-NN {row['knn']:.3f}"
        if trainer.step == 0:
            print(f"random weights: {scores}", flush=True)
            return
        print(
            f"epoch {trainer.epoch}/{trainer.config.epochs} step {trainer.step}: loss "
            f"{row['loss']:.4f} | {scores} | {row['seconds']:.0f}s"
            + (f" | stopped: {trainer.stop_reason}" if trainer.stop_reason else ""),
            flush=True,
        )

    def on_fit_end(self, trainer: Pretraining, metrics: dict) -> None:
        super().on_fit_end(trainer, metrics)
        if self.writer is not None:
            self.writer.close()
        if metrics:
            print(f"weights file {trainer.out / 'weights.pt'}", flush=True)


def default_callbacks(config: PretrainConfig, main_process: bool = True) -> list[Callback]:
    """What ``python -m train.pretrain`` writes and shows, on the main process only: the
    run folder, log, metrics, weights file and ``last.pt``."""
    if not main_process:
        return []
    return [
        PretrainFolder(),
        PretrainLog(config.log_every),
        MetricsCSV(CSV_FIELDS),
        WeightsFile(),
        Checkpoints(best=False),
    ]
