"""Self-play training as a library: a sender learns to draw and a receiver to read.

    from agents.config import SelfPlayConfig
    from agents.selfplay import fit
    metrics = fit(SelfPlayConfig(game="oo-different", epochs=2, output="runs/mine"))

:class:`Trainer` reads top to bottom: configuration, processes and seeding, games,
agents, optimiser, (resume); then :meth:`Trainer.fit` is the loop of
:class:`agents.loop.Loop` (one step per batch of games, validation after every epoch).
Everything else a run does (the run folder, console, TensorBoard, ``metrics.csv``,
sketch grids, checkpoints, ``--max-steps`` and ``--time-budget``) is a callback of
:mod:`agents.callbacks`, so a user adds their own (early stopping, another tracker)
without touching the loop. ``python -m train.selfplay`` is the command line; under
``torchrun`` each process plays its share of every batch's game blocks, or of each
block's games when there are fewer blocks than processes (:mod:`agents.distributed`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from agents import distributed
from agents.backbones import describe_weights
from agents.callbacks import Callback, default_callbacks, stopping_rules
from agents.checkpoint import CheckpointError, game_settings, load_agent_weights, read_checkpoint
from agents.config import RESUMABLE_OVERRIDES, SelfPlayConfig, config_from_dict
from agents.experiment import fill_defaults, make_agents, make_game
from agents.features import FeatureCache
from agents.loop import Loop
from agents.perceptual import default_tap_weights, make_perceptual_net
from agents.runs import lr_factor, schedule_horizon, seeded_generator, set_threads
from agents.trainer import GameLoss, Outcome, evaluate, update
from sketchenv.game import GameBatch, SketchGame, share_blocks

STATS = ("loss", "comm_rate", "class_rate")  # averaged over an epoch's steps


def resume_config(path: str | Path, changes: dict[str, Any]) -> tuple[SelfPlayConfig, dict]:
    """The config of the run at ``path`` (its folder or ``last.pt``) with the run-control
    ``changes`` (``RESUMABLE_OVERRIDES``; others are refused), and its checkpoint. The run
    continues in the folder it is read from, even if it was moved there."""
    payload = read_checkpoint(path, which="last")
    saved = payload["config"]
    changes = {"output": str(Path(payload["path"]).parent), **changes}
    changed = sorted(
        k for k, v in changes.items() if k not in RESUMABLE_OVERRIDES and saved.get(k) != v
    )
    if changed:
        raise ValueError(
            f"--resume continues {payload['path']} exactly, so {changed} cannot change; "
            f"only {list(RESUMABLE_OVERRIDES)} may. Start a new run to change the others."
        )
    return config_from_dict(saved | changes), payload


def validation_batches(
    game: SketchGame, n_games: int, blocks: int, seed: int, share: tuple[int, int] = (0, 1)
) -> Iterator[GameBatch]:
    """The same ``n_games`` (rounded up to whole blocks) at every validation pass, in
    batches of ``blocks`` blocks; with ``share``, only this process's non-empty shares."""
    generator = torch.Generator().manual_seed(seed)
    n_blocks = math.ceil(n_games / game.n_candidates)
    for start in range(0, n_blocks, blocks):
        batch = game.sample(min(blocks, n_blocks - start), generator, share=share)
        if batch.targets.numel():
            yield batch


class Trainer(Loop):
    """One self-play run, built from ``config`` (and ``resumed``, a checkpoint from
    :func:`resume_config`, to continue it exactly); :meth:`fit` trains it (the loop of
    :class:`agents.loop.Loop`: one step per batch of games, validation every epoch)."""

    def __init__(
        self,
        config: SelfPlayConfig,
        callbacks: Sequence[Callback] | None = None,
        resumed: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.resumed = resumed

        # Processes, seeding and device: one seed fixes initial weights and every game.
        self.processes, self.device = distributed.start(config.device)
        set_threads(config.threads)
        torch.manual_seed(config.seed)
        cuda = self.device.type == "cuda"
        self.amp = config.amp if cuda else config.cpu_bfloat16  # see agents.trainer.autocast

        # Games: the training split and a fixed set of validation games.
        self.game = make_game(config, "train")
        config = fill_defaults(config, self.game)  # the saved config leaves nothing to defaults
        self.val_game = make_game(config, "val")
        blocks = config.batch_size // self.game.n_candidates
        if blocks < 1:
            raise ValueError(
                f"--batch-size {config.batch_size} is less than one block of this game "
                f"({self.game.n_candidates} games, one per candidate): use at least "
                f"{self.game.n_candidates}"
            )
        self.blocks_per_batch = blocks
        # Processes share a step's blocks; with fewer blocks than processes (the paper's
        # 100 games are one block), each block's games instead (all see its candidates).
        self.share_games = blocks < self.processes.world
        self.steps_per_epoch = math.ceil(self.game.blocks_per_epoch / blocks)
        # The LR schedule's horizon (not max_steps), laid out by the run's first --epochs.
        self.total_steps = schedule_horizon(
            config.epochs, self.steps_per_epoch, resumed, config.lr_schedule == "cosine"
        )

        # Agents, the perceptual network and the optimiser (a shared encoder counts once).
        self.sender, self.receiver = make_agents(
            config, self.game.image_size, load_weights=resumed is None
        )
        self.sender.to(self.device), self.receiver.to(self.device)
        backbone = self.sender.encoder.backbone
        self.notes: list[str] = []  # shown by the Console callback
        if backbone.weights_info:
            self.notes.append(f"backbone weights: {describe_weights(backbone.weights_info)}")
        perceptual_net = None
        if config.perceptual_coef > 0:
            perceptual_net = make_perceptual_net(
                config.perceptual_net, backbone, self.game.image_size
            ).to(self.device)
            if config.perceptual_weights is None:
                config = config.replace(perceptual_weights=default_tap_weights(perceptual_net))
            taps = perceptual_net.tap_names
            if len(config.perceptual_weights) != len(taps):
                raise ValueError(
                    f"--perceptual-weights needs {len(taps)} values for the perceptual "
                    f"network {config.perceptual_net!r} (taps {list(taps)}), got "
                    f"{config.perceptual_weights}"
                )
        self.config = config
        model = GameLoss(
            self.sender,
            self.receiver,
            self.game,
            loss=config.loss,
            perceptual_net=perceptual_net,
            perceptual_weights=config.perceptual_weights or (),
            perceptual_coef=config.perceptual_coef,
            drawing_cost=config.drawing_cost,
            drawing_cost_kind=config.drawing_cost_kind,
        )
        backbone = self.receiver.encoder.backbone
        frozen = not any(p.requires_grad for p in backbone.parameters())
        fused = bool(model.taps) and self.game.game != "oo-different"  # has the maps anyway
        if config.feature_cache_mb > 0 and frozen and not fused:
            model.features = FeatureCache(
                backbone,
                len(self.game.labels),
                self.game.image_size,
                config.feature_cache_mb * 2**20,
            )
            self.notes.append(model.features.describe())
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, config.warmup_steps, self.total_steps, config.lr_schedule),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)

        # Where the run is: position in the data, history, best validation, and the
        # running sums of the epoch under way; all restored on resume.
        self.history: list[dict[str, Any]] = []
        self.best = {"val_comm_rate": -1.0, "step": -1}
        self.metrics: dict[str, float] = {}
        self.sums = dict.fromkeys(STATS, 0.0)
        if resumed is not None:
            self._restore(resumed)
        # Under torchrun, DDP averages the processes' gradients (after the resume, so
        # every process starts from the checkpoint's weights).
        if self.processes.world > 1:
            cuda = self.device.type == "cuda"
            model = DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)
        self.model = model

        self.out = Path(config.output)
        self.settings = game_settings(self.game)
        self.derived = {
            "games_per_step": blocks * self.game.n_candidates,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "device": str(self.device),
            "processes": self.processes.world,
            "amp": self.amp,
            "trainable_parameters": sum(p.numel() for p in self.params),
            "torch": torch.__version__,
        }
        if callbacks is None:
            callbacks = default_callbacks(config, self.processes.main)
        self.callbacks = [*stopping_rules(config), *callbacks]

    def _restore(self, resumed: dict[str, Any]) -> None:
        """Weights, optimiser, schedule, RNG, position, history and running sums."""
        state = ("optimizer", "scheduler", "scaler", "rng", "progress", "history", "best")
        missing = [k for k in state if k not in resumed]
        missing += [
            f"progress.{k}"
            for k in ("epoch", "batch", "step")
            if k not in resumed.get("progress", {})
        ]
        if missing:
            raise CheckpointError(f"{resumed['path']} lacks {missing}: it cannot be resumed")
        load_agent_weights(self.sender, self.receiver, resumed)
        try:
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.scheduler.load_state_dict(resumed["scheduler"])
            self.scaler.load_state_dict(resumed["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{resumed['path']}: cannot restore training state: {err}"
            ) from err
        torch.set_rng_state(resumed["rng"]["torch"])
        progress = resumed["progress"]
        self.epoch, self.batch, self.step = progress["epoch"], progress["batch"], progress["step"]
        self.history, self.best = resumed["history"], resumed["best"]
        self.metrics = resumed.get("metrics", {})
        self.sums = progress.get("sums", self.sums)
        self.n_steps = progress.get("n_steps", self.n_steps)

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds: weights, optimiser, schedule, RNG and position."""
        return {
            "config": self.config.to_dict(),
            "game": self.settings,
            "sender": self.sender.state_dict(),
            "receiver": self.receiver.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "progress": {
                "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "schedule_steps": self.total_steps, "sums": self.sums, "n_steps": self.n_steps,
            },
            "history": self.history,
            "best": self.best,
            "metrics": self.metrics,
        }  # fmt: skip

    def epoch_batches(self) -> Iterator[GameBatch]:
        """This process's share of the epoch's batches (all blocks when it shares games)."""
        self.model.train()
        share = (0, 1) if self.share_games else (self.processes.rank, self.processes.world)
        epoch_rng = seeded_generator(self.config.seed, self.epoch)
        return self.game.epoch(self.blocks_per_batch, epoch_rng, share=share)

    def train_step(self, batch: GameBatch, index: int) -> dict[str, float]:
        """One update on this process's share of batch ``index``; stats of all processes."""
        rank, world = self.processes.rank, self.processes.world
        if self.share_games:
            games = share_blocks(batch.targets.shape[1], rank, world)
            batch = batch.select_games(range(games.start, games.stop))
        blocks = min(
            self.blocks_per_batch, self.game.blocks_per_epoch - index * self.blocks_per_batch
        )
        mine = batch.targets.numel()  # games
        weight = world * mine / (blocks * self.game.n_candidates)
        if mine == 0:  # fewer blocks (or games) than processes: play a block, weighed 0
            batch = self.game.sample(1, torch.Generator().manual_seed(index))
        batch = batch.to(self.device, non_blocking=self.device.type == "cuda")
        _, stats = update(
            self.model, batch, self.optimizer, params=self.params, scaler=self.scaler,
            amp=self.amp, grad_clip=self.config.grad_clip, weight=weight,
        )  # fmt: skip
        self.scheduler.step()
        stats["loss"] = stats["loss/total"]
        if self.processes.world == 1:
            return stats
        # Means over all processes' games (the gradient norm is already the global one).
        keys = [k for k in stats if k != "grad_norm"]
        totals = self.processes.sum([stats[k] * mine for k in keys] + [mine], self.device)
        return {**dict(zip(keys, (t / totals[-1] for t in totals), strict=False)),
                "grad_norm": stats["grad_norm"]}  # fmt: skip

    def end_epoch(self) -> None:
        """Validate the epoch's end (or a budget stop), update the best, call the hooks."""
        train_stats = self.epoch_means()
        metrics, first = self.validate()
        self.metrics = metrics
        games = self.step * self.blocks_per_batch * self.game.n_candidates
        row = {
            "epoch": self.epoch, "step": self.step, "games": games,
            "seconds": round(time.monotonic() - self.start_time, 1),
            "lr": self.scheduler.get_last_lr()[0],
            **{f"train_{k}": v for k, v in train_stats.items()},
            **{f"val_{k}": metrics[k] for k in STATS},
        }  # fmt: skip
        self.history.append(row)
        self.call("on_validation_end", row, first)
        if metrics["comm_rate"] > self.best["val_comm_rate"]:
            self.best = {"val_comm_rate": metrics["comm_rate"], "step": self.step}
        self.call("on_epoch_end", row)

    def validate(self) -> tuple[dict[str, float], tuple[GameBatch, Outcome] | None]:
        """Loss and rates on the fixed validation games (all processes' shares combined),
        and this process's first batch with its outcome."""
        share = (self.processes.rank, self.processes.world)
        batches = validation_batches(
            self.val_game, self.config.val_games, self.blocks_per_batch, self.config.seed + 1, share
        )
        local, first = {"games": 0}, None
        if (head := next(batches, None)) is not None:
            local, first = evaluate(
                self.sender, self.receiver, self.val_game, itertools.chain([head], batches),
                self.device, loss=self.config.loss, amp=self.amp,
            )  # fmt: skip
        if self.processes.world == 1:
            return local, first
        totals = self.processes.sum(
            [local.get(k, 0.0) * local["games"] for k in STATS] + [local["games"]], self.device
        )
        metrics = {k: t / totals[-1] for k, t in zip(STATS, totals, strict=False)}
        return metrics | {"games": int(totals[-1])}, first


def fit(
    config: SelfPlayConfig,
    callbacks: Sequence[Callback] | None = None,
    resumed: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train the run ``config`` describes (or continue ``resumed``, from
    :func:`resume_config`); returns the last validation metrics. ``callbacks`` replace
    :func:`~agents.callbacks.default_callbacks` (add yours to that list to keep them);
    the config's ``max_steps`` and ``time_budget`` apply either way."""
    return Trainer(config, callbacks, resumed).fit()
