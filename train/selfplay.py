"""Gradient self-play: a sender learns to draw and a receiver learns to read its sketches.

    python -m train.selfplay                           # shapes, original game, 99 distractors
    python -m train.selfplay --game oo-different --dataset imagefolder:PATH --epochs 30
    python -m train.selfplay --config experiment.toml --seed 3    # flags override the file
    python -m train.selfplay --resume runs/selfplay-original-...  # continue exactly

Reads top to bottom: configuration, seeding, games, agents, optimiser, (resume), the
training loop (one step per batch of games), validation and checkpoints after every epoch.
The run directory gets ``config.json``, ``metrics.csv``, TensorBoard logs in ``tb/``, one
PNG grid of sketches per validation pass in ``grids/``, and ``last.pt`` / ``best.pt``
(written atomically). Ctrl-C or SIGTERM stops after the current step and saves
``last.pt``; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from agents.backbones import describe_weights
from agents.checkpoint import (
    CheckpointError,
    game_settings,
    load_agent_weights,
    read_checkpoint,
    save_checkpoint,
)
from agents.config import (
    RESUMABLE_OVERRIDES,
    SelfPlayConfig,
    config_from_dict,
    load_config_file,
)
from agents.experiment import fill_defaults, make_agents, make_game
from agents.files import make_folder, remove_stray_temporaries, write_atomic
from agents.perceptual import default_tap_weights, make_perceptual_net
from agents.runs import (
    THREADS_HELP,
    epoch_bar,
    lr_factor,
    schedule_horizon,
    seeded_generator,
    set_threads,
    sketch_grid,
    stop_on_signal,
    stop_reason_now,
    write_csv,
    write_png,
)
from agents.trainer import evaluate, select_device, train_step
from sketchenv.game import GameBatch, SketchGame
from train.flags import find_config, run_command

CSV_FIELDS = (
    "epoch", "step", "games", "seconds", "lr", "train_loss", "train_comm_rate",
    "train_class_rate", "val_loss", "val_comm_rate", "val_class_rate",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """Flags mirror :class:`SelfPlayConfig`; unset flags fall back to the file, then defaults."""
    d = SelfPlayConfig()
    p = argparse.ArgumentParser(
        prog="python -m train.selfplay",
        description=__doc__,
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="JSON or TOML file of options (flags override it)")
    p.add_argument("--resume", help="run directory or checkpoint to continue exactly")
    bool_flag = argparse.BooleanOptionalAction

    g = p.add_argument_group("game")
    g.add_argument("--game", choices=("original", "oo-same", "oo-different"), help=f"[{d.game}]")
    g.add_argument("--dataset", help=f"registry name or imagefolder:PATH [{d.dataset}]")
    g.add_argument("--data-root", help=f"where datasets live [{d.data_root}]")
    g.add_argument("--download", action=bool_flag, help="download the dataset if missing")
    g.add_argument(
        "--image-size", type=int, help="pixels per side [32 for small, native for vgg16]"
    )
    g.add_argument("--n-distractors", type=int, help="[99 original, classes-1 for OO games]")
    g.add_argument("--lines", type=int, help=f"strokes per sketch [{d.lines}]")
    g.add_argument(
        "--sigma2", type=float, help="stroke width sigma^2 in canvas units [5e-4*(96/size)^2]"
    )
    g.add_argument("--invert", action=bool_flag, help="black strokes on white [on]")

    a = p.add_argument_group("agents")
    a.add_argument("--backbone", choices=("small", "vgg16"), help=f"[{d.backbone}]")
    a.add_argument(
        "--weights",
        help="imagenet | stylized:PATH_OR_URL | none | FILE_OR_URL | shipped name "
        "[imagenet for vgg16; for small, the shipped visual system of the dataset at this "
        "size and width when there is one (shapes at 32 and 64 px), else none]",
    )
    a.add_argument(
        "--backbone-width", type=int, help=f"small backbone channels [{d.backbone_width}]"
    )
    a.add_argument(
        "--freeze-backbone",
        action=bool_flag,
        help="train only projection and heads [on with pretrained weights, off without]",
    )
    a.add_argument("--separate-encoders", action=bool_flag, help="sender and receiver own one each")
    a.add_argument("--latent-size", type=int, help=f"projection output [{d.latent_size}]")
    a.add_argument("--sender-hidden", type=int, nargs="+", help=f"[{d.sender_hidden}]")
    a.add_argument("--receiver-hidden", type=int, nargs="+", help=f"[{d.receiver_hidden}]")
    a.add_argument("--receiver-out", type=int, help=f"receiver embedding size [{d.receiver_out}]")
    a.add_argument("--score", choices=("dot", "cosine"), help=f"dot = paper [{d.score}]")
    a.add_argument("--score-scale", type=float, help=f"initial cosine scale [{d.score_scale}]")

    o = p.add_argument_group("losses and optimisation")
    o.add_argument("--loss", choices=("hinge", "ce"), help=f"[{d.loss}]")
    o.add_argument("--perceptual-coef", type=float, help="perceptual loss weight (0 = off) [0]")
    o.add_argument(
        "--perceptual-net",
        help="drawing | edges | agents | vgg16[:WEIGHTS] | weights FILE or shipped name [drawing]",
    )
    o.add_argument(
        "--perceptual-weights",
        type=float,
        nargs="+",
        help="per tap of the perceptual network [drawing: 4 2 1 1; others: all 1]",
    )
    o.add_argument("--epochs", type=int, help=f"[{d.epochs}]")
    o.add_argument("--batch-size", type=int, help=f"games per step [{d.batch_size}]")
    o.add_argument("--lr", type=float, help=f"[{d.lr}]")
    o.add_argument("--weight-decay", type=float, help=f"AdamW decoupled decay [{d.weight_decay}]")
    o.add_argument("--lr-schedule", choices=("cosine", "constant"), help=f"[{d.lr_schedule}]")
    o.add_argument("--warmup-steps", type=int, help=f"linear warm-up [{d.warmup_steps}]")
    o.add_argument("--grad-clip", type=float, help=f"max gradient norm, 0 = off [{d.grad_clip}]")

    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, help=f"[{d.seed}]")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N [auto]")
    r.add_argument("--threads", type=int, help=f"{THREADS_HELP} [{d.threads}]")
    r.add_argument("--amp", action=bool_flag, help="float16 autocast on CUDA [on]")
    r.add_argument("--output", help="run directory [runs/selfplay-<game>-<time>]")
    r.add_argument("--val-games", type=int, help=f"validation games per pass [{d.val_games}]")
    r.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    r.add_argument("--time-budget", type=float, help="stop after this many seconds (this process)")
    r.add_argument(
        "--log-every", type=int, help=f"steps between TensorBoard points [{d.log_every}]"
    )
    return p


def resolve_config(argv: Sequence[str] | None) -> tuple[SelfPlayConfig, dict | None]:
    """Defaults < --config file < flags; with --resume, the checkpoint's config (only
    run-control flags may change). Returns the config and the checkpoint to resume."""
    args = vars(build_parser().parse_args(argv))
    config_file, resume = args.pop("config", None), args.pop("resume", None)
    values = load_config_file(find_config(config_file)) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()} | args
    if resume is None:
        config = config_from_dict(values)
        if config.output is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            config = config.replace(output=f"runs/selfplay-{config.game}-{stamp}")
        return config, None
    payload = read_checkpoint(resume, which="last")
    saved = payload["config"]
    values = {"output": str(Path(payload["path"]).parent), **values}  # where it is now
    changed = sorted(
        k for k, v in values.items() if k not in RESUMABLE_OVERRIDES and saved.get(k) != v
    )
    if changed:
        raise ValueError(
            f"--resume continues {payload['path']} exactly, so {changed} cannot change; "
            f"only {list(RESUMABLE_OVERRIDES)} may. Start a new run to change the others."
        )
    return config_from_dict(saved | values), payload


def validation_batches(
    game: SketchGame, n_games: int, blocks: int, seed: int
) -> Iterator[GameBatch]:
    """The same ``n_games`` (rounded up to whole blocks) at every validation pass."""
    generator = torch.Generator().manual_seed(seed)
    n_blocks = math.ceil(n_games / game.n_candidates)
    for start in range(0, n_blocks, blocks):
        yield game.sample(min(blocks, n_blocks - start), generator)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train; returns the final validation metrics (also in ``metrics.csv``)."""
    start_time = time.monotonic()
    config, resumed = resolve_config(argv)

    # Seeding and device: one --seed fixes initial weights and every game drawn.
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    device = select_device(config.device)
    use_amp = config.amp and device.type == "cuda"

    # Games: the training split and a fixed set of validation games.
    train_game = make_game(config, "train")
    config = fill_defaults(config, train_game)  # the saved config leaves nothing to defaults
    val_game = make_game(config, "val")
    if config.batch_size < train_game.n_candidates:
        raise ValueError(
            f"--batch-size {config.batch_size} is less than one block of this game "
            f"({train_game.n_candidates} games, one per candidate): use at least "
            f"{train_game.n_candidates}"
        )
    blocks_per_batch = config.batch_size // train_game.n_candidates
    steps_per_epoch = math.ceil(train_game.blocks_per_epoch / blocks_per_batch)
    # The LR schedule's horizon (not max_steps), laid out by the run's first --epochs.
    total_steps = schedule_horizon(
        config.epochs, steps_per_epoch, resumed, config.lr_schedule == "cosine"
    )

    # Agents and optimiser. A shared encoder's parameters are counted (and updated) once.
    sender, receiver = make_agents(config, train_game.image_size, load_weights=resumed is None)
    agents = nn.ModuleDict({"sender": sender, "receiver": receiver}).to(device)
    params = [p for p in agents.parameters() if p.requires_grad]
    if sender.encoder.backbone.weights_info:
        print(f"backbone weights: {describe_weights(sender.encoder.backbone.weights_info)}")
    perceptual_net = None  # the perceptual loss's network, and the weight of each tap
    if config.perceptual_coef > 0:
        perceptual_net = make_perceptual_net(
            config.perceptual_net, sender.encoder.backbone, train_game.image_size
        ).to(device)
        taps = perceptual_net.tap_names
        if config.perceptual_weights is None:
            config = config.replace(perceptual_weights=default_tap_weights(perceptual_net))
        if len(config.perceptual_weights) != len(taps):
            raise ValueError(
                f"--perceptual-weights needs {len(taps)} values for the perceptual network "
                f"{config.perceptual_net!r} (taps {list(taps)}), got {config.perceptual_weights}"
            )
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, total_steps, config.lr_schedule)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    loss_options = {
        "loss": config.loss,
        "perceptual_net": perceptual_net,
        "perceptual_weights": config.perceptual_weights,
        "perceptual_coef": config.perceptual_coef,
    }

    # Resume: weights, optimiser, schedule, RNG, position in the data, history, and the
    # running sums of the interrupted epoch's training statistics.
    epoch, batch_start, step, history, best = 0, 0, 0, [], {"val_comm_rate": -1.0, "step": -1}
    sums, n_steps = dict.fromkeys(("loss", "comm_rate", "class_rate"), 0.0), 0
    if resumed is not None:
        state = ("optimizer", "scheduler", "scaler", "rng", "progress", "history", "best")
        missing = [k for k in state if k not in resumed]
        missing += [
            f"progress.{k}"
            for k in ("epoch", "batch", "step")
            if k not in resumed.get("progress", {})
        ]
        if missing:
            raise CheckpointError(f"{resumed['path']} lacks {missing}: it cannot be resumed")
        load_agent_weights(sender, receiver, resumed)
        try:
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            scaler.load_state_dict(resumed["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{resumed['path']}: cannot restore training state: {err}"
            ) from err
        torch.set_rng_state(resumed["rng"]["torch"])
        progress = resumed["progress"]
        epoch, batch_start, step = progress["epoch"], progress["batch"], progress["step"]
        history, best = resumed["history"], resumed["best"]
        sums, n_steps = progress.get("sums", sums), progress.get("n_steps", n_steps)

    # Output directory: resolved config, TensorBoard, metrics, grids, checkpoints.
    out = Path(config.output)
    if resumed is None and (out / "last.pt").exists():
        raise FileExistsError(
            f"{out} already holds a run; continue it with --resume {out} or pick another --output"
        )
    make_folder(out)
    (out / "grids").mkdir(exist_ok=True)
    for folder in (out, out / "grids"):  # of writes killed mid-way (real files are whole)
        remove_stray_temporaries(folder)
    settings = game_settings(train_game)
    write_atomic(
        out / "config.json",
        json.dumps(
            {
                "config": config.to_dict(),
                "game": settings,
                "derived": {
                    "games_per_step": blocks_per_batch * train_game.n_candidates,
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps,
                    "device": str(device),
                    "amp": use_amp,
                    "trainable_parameters": sum(p.numel() for p in params),
                    "torch": torch.__version__,
                },
            },
            indent=2,
        ).encode(),
    )
    writer = SummaryWriter(str(out / "tb"), purge_step=step if resumed else None)

    def checkpoint(name: str, metrics: dict) -> None:
        save_checkpoint(
            out / name,
            {
                "config": config.to_dict(),
                "game": settings,
                "sender": sender.state_dict(),
                "receiver": receiver.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
                "progress": {
                    "epoch": epoch, "batch": batch_start, "step": step,
                    "schedule_steps": total_steps, "sums": sums, "n_steps": n_steps,
                },
                "history": history,
                "best": best,
                "metrics": metrics,
            },
        )  # fmt: skip

    def validate(train_stats: dict) -> dict:
        batches = validation_batches(val_game, config.val_games, blocks_per_batch, config.seed + 1)
        metrics, (batch, outcome) = evaluate(
            sender, receiver, val_game, batches, device, loss=config.loss, amp=use_amp
        )
        grid = sketch_grid(batch.sender_images.flatten(0, 1), outcome.sketches.flatten(0, 1))
        write_png(out / "grids" / f"step{step:07d}.png", grid)
        writer.add_image("val/sketches", grid, step)
        for key in ("loss", "comm_rate", "class_rate"):
            writer.add_scalar(f"val/{key}", metrics[key], step)
        row = {
            "epoch": epoch, "step": step, "games": step * blocks_per_batch * train_game.n_candidates,
            "seconds": round(time.monotonic() - start_time, 1), "lr": scheduler.get_last_lr()[0],
            **{f"train_{k}": v for k, v in train_stats.items()},
            **{f"val_{k}": metrics[k] for k in ("loss", "comm_rate", "class_rate")},
        }  # fmt: skip
        history.append(row)
        write_csv(out / "metrics.csv", history, CSV_FIELDS)
        return metrics

    # The training loop.
    print(
        f"run dir {out} | device {device} | {steps_per_epoch} steps/epoch x {config.epochs} epochs"
        + (f" | resuming at step {step}" if resumed else ""),
        flush=True,
    )
    metrics = resumed["metrics"] if resumed else {}
    if resumed and (epoch >= config.epochs or step >= (config.max_steps or math.inf)):
        print(
            f"nothing to do: {out} is at step {step} (epoch {epoch}/{config.epochs}); raise "
            "--epochs (up to the schedule's) or --max-steps to train further",
            flush=True,
        )
    with stop_on_signal() as interrupted:

        def should_stop(after_step: bool = True) -> str | None:
            return stop_reason_now(interrupted, config, step, start_time, after_step)

        while epoch < config.epochs and (stop_reason := should_stop(after_step=False)) is None:
            agents.train()
            batches = train_game.epoch(blocks_per_batch, seeded_generator(config.seed, epoch))
            window: list[float] = []
            bar = epoch_bar(batches, batch_start, steps_per_epoch, epoch, config.epochs)
            for batch in bar:
                batch = batch.to(device, non_blocking=device.type == "cuda")
                _, stats = train_step(
                    sender, receiver, train_game, batch, optimizer, params=params,
                    scaler=scaler, amp=use_amp, grad_clip=config.grad_clip, **loss_options,
                )  # fmt: skip
                scheduler.step()
                step, batch_start, n_steps = step + 1, batch_start + 1, n_steps + 1
                for key in sums:
                    sums[key] += stats["loss/total" if key == "loss" else key]
                window = [*window[-49:], stats["comm_rate"]]
                bar.set_postfix(
                    comm=f"{sum(window) / len(window):.3f}", loss=f"{stats['loss/total']:.3f}"
                )
                if step % config.log_every == 0:
                    for key, value in stats.items():
                        writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    if receiver.log_scale is not None:
                        writer.add_scalar(
                            "train/score_scale", receiver.log_scale.exp().item(), step
                        )
                if stop_reason := should_stop():
                    break
            bar.close()
            if stop_reason in ("SIGINT", "SIGTERM") and batch_start < steps_per_epoch:
                checkpoint("last.pt", metrics)  # interrupted mid-epoch: save at once
                print(
                    f"stopped ({stop_reason}) at step {step}; resume with --resume {out}",
                    flush=True,
                )
                break
            # The epoch is done (or stopped by a budget): validate, save, start the next.
            if batch_start >= steps_per_epoch:
                epoch, batch_start = epoch + 1, 0
            train_stats = {k: v / max(1, n_steps) for k, v in sums.items()}
            sums, n_steps = dict.fromkeys(sums, 0.0), 0
            metrics = validate(train_stats)
            improved = metrics["comm_rate"] > best["val_comm_rate"]
            if improved:
                best = {"val_comm_rate": metrics["comm_rate"], "step": step}
            checkpoint("last.pt", metrics)
            if improved:
                checkpoint("best.pt", metrics)
            print(
                f"epoch {epoch}/{config.epochs} step {step}: train comm {train_stats['comm_rate']:.3f}"
                f" | val comm {metrics['comm_rate']:.3f} class {metrics['class_rate']:.3f}"
                f" | {time.monotonic() - start_time:.0f}s"
                + (f" | stopped: {stop_reason}" if stop_reason else ""),
                flush=True,
            )
            if stop_reason in ("SIGINT", "SIGTERM"):
                print(f"resume with --resume {out}", flush=True)
            if stop_reason:  # a signal at an epoch's end, max_steps or time_budget
                break
    writer.close()
    return metrics


if __name__ == "__main__":
    run_command(main, "python -m train.selfplay")
