"""Reinforcement learning through the env API: a sender and a receiver trained by policy
gradient on ``sketchenv.vector_env``, from rewards alone.

    python -m train.rl                                   # oo-same on shapes, 300,000 games
    python -m train.rl --game original --n-distractors 9 --games 1000000
    python -m train.rl --receiver-from runs/selfplay-... # a sender for a fixed receiver
    python -m train.rl --resume runs/rl-oo-same-...      # continue exactly

Each round plays ``--num-envs`` games at once: the senders sample strokes, the env draws
them, the receivers sample a choice, the env pays 1 for every won game. Both agents then
take one REINFORCE step with the round's mean reward as baseline (plus an entropy bonus).
No gradient crosses the rasteriser: this is the route for channels that are not
differentiable, and the comparison for ``train.selfplay`` (see the README). The agents
are those of :mod:`agents.rl`; any ``policy(observation, agent)`` can take either seat
as a fixed partner (``--sender-from``/``--receiver-from`` RUN, or :func:`train` from
Python). Validation plays ``--val-games`` greedy games of the validation split every
``--eval-every`` games; the end of the run plays as many on the test split.

The run folder gets ``config.json``, ``metrics.csv``, TensorBoard logs in ``tb/``, a grid
of validation sketches per pass in ``grids/`` and ``last.pt`` (written atomically).
Ctrl-C or SIGTERM stops after the round and saves; ``--resume`` continues exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.backbones import describe_weights
from agents.config import load_config_file
from agents.files import make_folder, remove_stray_temporaries, save_torch, write_atomic
from agents.rl import (
    FORMAT,
    RESUMABLE,
    VERSION,
    RLConfig,
    act,
    learns,
    load_policy,
    make_agents,
    read_rl_checkpoint,
    rl_config,
    to_images,
)
from agents.runs import (
    set_threads,
    sketch_grid,
    stop_on_signal,
    stop_reason_now,
    write_csv,
    write_png,
)
from agents.trainer import select_device
from sketchenv.env import RECEIVER, SENDER
from sketchenv.vector import SketchVectorEnv, vector_env
from train.flags import add_config_flags, find_config, run_command

CSV_FIELDS = (
    "round", "games", "seconds", "train_comm_rate", "sender_std", "receiver_entropy",
    "val_comm_rate", "val_class_rate",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.rl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="JSON or TOML file of options (flags override it)")
    p.add_argument("--resume", help="run directory or last.pt to continue exactly")
    add_config_flags(p, RLConfig)
    return p


def resolve(argv: Sequence[str] | None) -> tuple[RLConfig, dict[str, Any] | None]:
    """Defaults < --config file < flags; with --resume, the run's own config (only
    run-control flags may change). Returns the config and the checkpoint to resume."""
    args = vars(build_parser().parse_args(argv))
    config_file, resume = args.pop("config", None), args.pop("resume", None)
    values = load_config_file(find_config(config_file)) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()} | args
    if resume is None:
        config = rl_config(values)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return dataclasses.replace(
            config, output=config.output or f"runs/rl-{config.game}-{stamp}"
        ), None
    payload = read_rl_checkpoint(resume)
    saved = payload["config"]
    values = {"output": str(Path(payload["path"]).parent), **values}  # where it is now
    changed = sorted(k for k, v in values.items() if k not in RESUMABLE and saved.get(k) != v)
    if changed:
        raise ValueError(
            f"--resume continues {payload['path']} exactly, so {changed} cannot change; "
            f"only {list(RESUMABLE)} may. Start a new run to change the others."
        )
    return rl_config(saved | values), payload


def round_seed(*keys: int) -> int:
    """The env seed of one round (its slots get ``seed + i``), from ``keys`` only."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint32)[0])


def play_round(
    env: SketchVectorEnv, seats: dict[str, Any], seed: int, generator: torch.Generator | None
) -> tuple[np.ndarray, dict, dict, dict]:
    """One game in every slot of ``env``: rewards ``[N]``, the receiver's final infos, per
    learning seat its ``(log_prob, entropy)``, and the images and sketches (for grids).
    Learning seats sample their actions with ``generator``; without one every seat plays
    its policy's own (greedy) action."""
    observations, _ = env.reset(seed=seed)
    learnt: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    seen = {"images": observations[SENDER]["image"].copy()}  # the env may reuse its buffers
    for agent in (SENDER, RECEIVER):
        policy = seats[agent]
        if generator is not None and learns(policy):
            action, log_prob, entropy = policy.sample(observations[agent], generator)
            learnt[agent] = (log_prob, entropy)
        else:
            with torch.no_grad():
                action = act(policy, observations[agent], agent)
        observations, rewards, _, _, infos = env.step({agent: action})
        if agent == SENDER:
            seen["sketches"] = observations[RECEIVER]["sketch"].copy()
    return rewards[RECEIVER], infos[RECEIVER], learnt, seen


def evaluate(
    env: SketchVectorEnv, seats: dict[str, Any], n_games: int, seed: int
) -> tuple[dict[str, float], dict]:
    """Greedy play (every policy's own ``policy(observation, agent)``) on the same
    ``n_games`` (whole rounds) at every call: the rates and the first round's pictures."""
    won, right, first = [], [], None
    for k in range(math.ceil(n_games / env.num_envs)):
        rewards, infos, _, seen = play_round(env, seats, round_seed(seed, k), None)
        won.append(rewards)
        right.append(infos["class_correct"])
        first = first or seen
    return {
        "comm_rate": float(np.concatenate(won).mean()),
        "class_rate": float(np.concatenate(right).mean()),
    }, first


def train(
    config: RLConfig,
    resumed: dict[str, Any] | None = None,
    *,
    sender: Any = None,
    receiver: Any = None,
) -> dict[str, float]:
    """Train and write the run folder; returns the last validation and the test rates.

    ``sender``/``receiver``: any ``policy(observation, agent)`` to play that seat instead
    of the built-in agent: a module with ``sample`` and trainable parameters learns (see
    :mod:`agents.rl`), anything else plays fixed. ``resumed`` is a checkpoint from
    :func:`resolve` (pass the same partners again)."""
    start_time = time.monotonic()
    set_threads(config.threads)

    # Seeding and device: one --seed fixes the weights, every game and every sampled action.
    torch.manual_seed(config.seed)
    device = select_device(config.device)
    generator = torch.Generator().manual_seed(config.seed)

    # Games: N at once on the training split; greedy validation and test games.
    options = {
        "game": config.game,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "n_distractors": config.n_distractors,
        "n_lines": config.lines,
        "root": config.data_root,
        "download": config.download,
    }
    envs = {
        split: vector_env(config.num_envs, copy=False, split=split, **options)
        for split in ("train", "val", "test")
    }

    # Seats: the built-in agents, a fixed run's policy, or the caller's policies.
    agents = make_agents(config, device, load=resumed is None)
    backbone = agents.backbone
    if resumed is None:
        info = backbone.weights_info
        print(
            "visual system: "
            + (describe_weights(info) if info else "random (frozen): no weights for this data")
        )
    seats = {SENDER: sender or agents.sender, RECEIVER: receiver or agents.receiver}
    for agent, path in ((SENDER, config.sender_from), (RECEIVER, config.receiver_from)):
        if path is not None:
            seats[agent] = load_policy(path, agent, config, device)
    for policy in seats.values():
        if hasattr(policy, "check_env"):
            policy.check_env(envs["train"].single)
    learning = [agent for agent in (SENDER, RECEIVER) if learns(seats[agent])]
    if not learning:
        raise ValueError("both seats play fixed policies: there is nothing to learn")
    lrs = {SENDER: config.lr_sender, RECEIVER: config.lr_receiver}
    entropy_coef = {SENDER: config.entropy_sender, RECEIVER: config.entropy_receiver}
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in seats[a].parameters() if p.requires_grad], "lr": lrs[a]}
            for a in learning
        ]
    )

    # Resume: weights, optimiser, sampler, position, history.
    rounds, games, history, metrics = 0, 0, [], {}
    if resumed is not None:
        try:
            agents.load_state_dict(resumed["agents"])
            for agent in learning:
                if seats[agent] not in (agents.sender, agents.receiver):
                    seats[agent].load_state_dict(resumed["seats"][agent])
            optimizer.load_state_dict(resumed["optimizer"])
            generator.set_state(resumed["generator"])
            rounds, games = resumed["progress"]["rounds"], resumed["progress"]["games"]
            history, metrics = resumed["history"], resumed["metrics"]
        except (KeyError, ValueError, RuntimeError) as err:
            raise ValueError(f"{resumed['path']}: cannot restore its state: {err}") from err

    # Output directory.
    out = Path(config.output)
    if resumed is None and (out / "last.pt").exists():
        raise FileExistsError(
            f"{out} already holds a run; continue it with --resume {out} or pick another --output"
        )
    make_folder(out)
    (out / "grids").mkdir(exist_ok=True)
    for folder in (out, out / "grids"):
        remove_stray_temporaries(folder)
    write_atomic(
        out / "config.json",
        json.dumps(
            {
                "config": config.to_dict(),
                "derived": {
                    "candidates": envs["train"].n_candidates,
                    "learning": learning,
                    "device": str(device),
                    "torch": torch.__version__,
                },
            },
            indent=2,
        ).encode(),
    )
    writer = SummaryWriter(str(out / "tb"), purge_step=rounds if resumed else None)

    def checkpoint() -> None:
        save_torch(
            out / "last.pt",
            {
                "format": FORMAT,
                "version": VERSION,
                "config": config.to_dict(),
                "agents": agents.state_dict(),
                "seats": {
                    a: seats[a].state_dict()
                    for a in learning
                    if seats[a] not in (agents.sender, agents.receiver)
                },
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "progress": {"rounds": rounds, "games": games},
                "history": history,
                "metrics": metrics,
            },
        )

    def validate(window: list[float]) -> dict[str, float]:
        rates, seen = evaluate(envs["val"], seats, config.val_games, config.seed + 1)
        grid = sketch_grid(to_images(seen["images"]), to_images(seen["sketches"]))
        write_png(out / "grids" / f"games{games:09d}.png", grid)
        writer.add_image("val/sketches", grid, rounds)
        for key, value in rates.items():
            writer.add_scalar(f"val/{key}", value, rounds)
        sender_std = getattr(seats[SENDER], "std", None)
        std = sender_std().mean().item() if callable(sender_std) else float("nan")
        row = {
            "round": rounds, "games": games, "seconds": round(time.monotonic() - start_time, 1),
            "train_comm_rate": float(np.mean(window)) if window else float("nan"),
            "sender_std": std, "receiver_entropy": entropy_seen.get(RECEIVER, float("nan")),
            **{f"val_{k}": v for k, v in rates.items()},
        }  # fmt: skip
        history.append(row)
        write_csv(out / "metrics.csv", history, CSV_FIELDS)
        return rates

    # The training loop: one round of games, one policy-gradient step.
    print(
        f"run dir {out} | device {device} | learning {', '.join(learning)} | "
        f"{config.num_envs} games per round, {config.games:,} games"
        + (f" | resuming at {games:,}" if resumed else ""),
        flush=True,
    )
    window: list[float] = []
    entropy_seen: dict[str, float] = {}
    bar = tqdm(total=config.games, initial=min(games, config.games), unit="game", disable=None)
    stop_reason = None
    with stop_on_signal() as interrupted:
        while games < config.games:
            rewards, _, learnt, _ = play_round(
                envs["train"], seats, round_seed(config.seed, rounds), generator
            )
            reward = torch.from_numpy(rewards).to(device)
            advantage = reward - reward.mean()
            loss = torch.zeros((), device=device)
            for agent, (log_prob, entropy) in learnt.items():
                loss = loss - (advantage * log_prob).mean() - entropy_coef[agent] * entropy.mean()
                entropy_seen[agent] = entropy.mean().item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rounds, games = rounds + 1, games + len(rewards)
            window = [*window[-49:], float(rewards.mean())]
            bar.update(len(rewards))
            bar.set_postfix(comm=f"{np.mean(window):.3f}")
            if rounds % config.log_every == 0:
                writer.add_scalar("train/comm_rate", float(rewards.mean()), rounds)
                writer.add_scalar("train/loss", loss.item(), rounds)
                for agent, value in entropy_seen.items():
                    writer.add_scalar(f"train/{agent}_entropy", value, rounds)
            stop_reason = stop_reason_now(interrupted, config, rounds, start_time)
            every = max(1, config.eval_every // config.num_envs)
            if rounds % every == 0 or games >= config.games or stop_reason:
                metrics = validate(window)
                checkpoint()
                bar.write(
                    f"{games:,} games: train comm {np.mean(window):.3f} | val comm "
                    f"{metrics['comm_rate']:.3f} class {metrics['class_rate']:.3f} | "
                    f"{time.monotonic() - start_time:.0f}s"
                )
            if stop_reason:
                break
    bar.close()
    if stop_reason:
        print(f"stopped ({stop_reason}) at {games:,} games; resume with --resume {out}")
    else:
        test, _ = evaluate(envs["test"], seats, config.val_games, config.seed + 2)
        metrics = {**metrics, **{f"test_{k}": v for k, v in test.items()}}
        print(
            f"done: {games:,} games | val comm {metrics['comm_rate']:.3f} | test comm "
            f"{test['comm_rate']:.3f} class {test['class_rate']:.3f} | "
            f"{time.monotonic() - start_time:.0f}s"
        )
    writer.close()
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train from the command line; returns the final rates."""
    return train(*resolve(argv))


if __name__ == "__main__":
    run_command(main, "python -m train.rl")
