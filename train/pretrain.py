"""Pretrain a visual system for the agents, the perceptual loss or a recogniser.

    python -m train.pretrain                                  # supervised, small CNN, shapes
    python -m train.pretrain --method barlow --epochs 30      # Barlow Twins (no labels)
    python -m train.pretrain --method simclr --dataset imagefolder:PATH --image-size 64
    python -m train.pretrain --backbone vgg16 --dataset stl10 --method barlow   # GPU
    python -m train.pretrain --resume runs/pretrain-barlow-...                  # continue exactly
    python -m train.pretrain --remake shapes-supervised-32    # re-make a shipped weights file
    torchrun --standalone --nproc-per-node 4 -m train.pretrain --method barlow   # 4 GPUs

Methods: ``barlow`` (Barlow Twins, the paper's future work), ``simclr`` (InfoNCE) and
``supervised`` (cross-entropy on the training labels, the analogue of ImageNet weights).
The run folder's ``weights.pt`` goes to ``train.selfplay --weights`` (the agents'
encoder), ``train.selfplay --perceptual-net`` (the perceptual loss) and
``train.evaluate --recogniser`` (supervised weights only). Linear-probe and k-NN accuracy
on the validation split are printed, logged to TensorBoard and stored in the file.
Under ``torchrun`` each process encodes its share of every batch and the methods' losses
see the whole batch (:class:`agents.pretrain.PretrainLoss`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agents import distributed
from agents.config import load_config_file
from agents.files import write_atomic
from agents.pretrain import (
    PretrainConfig,
    Pretraining,
    pretrain_config,
    read_pretrain_checkpoint,
    resume_config,
    run_folder,
)
from agents.zoo import WEIGHTS_DIR, recipe_path, shipped
from train.flags import add_config_flags, find_config, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="JSON or TOML file of options (flags override it)")
    p.add_argument("--resume", help="run directory or last.pt to continue exactly")
    p.add_argument(
        "--remake",
        metavar="NAME",
        help=f"re-make the shipped weights NAME from its recipe ({', '.join(shipped())}) "
        "and install the result in agents/weights/",
    )
    add_config_flags(p, PretrainConfig)
    return p


def resolve(
    argv: Sequence[str] | None,
) -> tuple[PretrainConfig, dict[str, Any] | None, str | None]:
    """Defaults < --config file (or --remake's recipe) < flags; with --resume, the run's
    own config. Returns the config, the checkpoint to resume, and the name to remake."""
    args = vars(build_parser().parse_args(argv))
    config_file, resume = args.pop("config", None), args.pop("resume", None)
    remake = args.pop("remake", None)
    if remake is not None:
        if config_file or resume:
            raise ValueError(
                "--remake NAME takes its options from the recipe: drop --config/--resume"
            )
        config_file = recipe_path(remake)
        args.setdefault("output", f"runs/remake-{remake}-{datetime.now():%Y%m%d-%H%M%S}")
    values = load_config_file(find_config(config_file)) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()} | args
    if resume is not None:
        return (*resume_config(resume, values), None)
    config = pretrain_config(values)
    return dataclasses.replace(config, output=str(run_folder(config))), None, remake


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Pretrain; returns the last linear-probe and k-NN accuracies."""
    config, resumed, remake = resolve(argv)
    run = Pretraining(config, resumed=resumed)
    metrics = run.fit()
    distributed.stop()
    if not run.processes.main:  # under torchrun: rank 0 wrote the run folder
        return metrics
    finished = read_pretrain_checkpoint(config.output)["progress"]["epoch"] >= config.epochs
    if remake is not None and not finished:
        print(
            f"not installed: the run stopped early; --resume {config.output}, then copy its weights.pt"
        )
    elif remake is not None:
        target = WEIGHTS_DIR / f"{remake}.pt"
        write_atomic(target, (Path(config.output) / "weights.pt").read_bytes())
        print(f"installed {target}")
    return metrics


if __name__ == "__main__":
    run_command(main, "python -m train.pretrain")
