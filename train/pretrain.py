"""Pretrain a visual system for the agents, the perceptual loss or a recogniser.

    python -m train.pretrain                                  # supervised, small CNN, shapes
    python -m train.pretrain --method barlow --epochs 30      # Barlow Twins (no labels)
    python -m train.pretrain --method simclr --dataset imagefolder:PATH --image-size 64
    python -m train.pretrain --backbone vgg16 --dataset stl10 --method barlow   # GPU
    python -m train.pretrain --resume runs/pretrain-barlow-...                  # continue exactly

Methods: ``barlow`` (Barlow Twins, the paper's future work), ``simclr`` (InfoNCE) and
``supervised`` (cross-entropy on the training labels, the analogue of ImageNet weights).
The run folder's ``weights.pt`` goes to ``train.selfplay --weights`` (the agents'
encoder), ``train.selfplay --perceptual-net`` (the perceptual loss) and
``train.evaluate --recogniser`` (supervised weights only). Linear-probe and k-NN accuracy
on the validation split are printed, logged to TensorBoard and stored in the file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from agents.checkpoint import CheckpointError
from agents.config import load_config_file
from agents.pretrain import PretrainConfig, pretrain, pretrain_config, resume_config
from train.flags import add_config_flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="JSON or TOML file of options (flags override it)")
    p.add_argument("--resume", help="run directory or last.pt to continue exactly")
    add_config_flags(p, PretrainConfig)
    return p


def resolve(argv: Sequence[str] | None) -> tuple[PretrainConfig, dict[str, Any] | None]:
    """Defaults < --config file < flags; with --resume, the run's own config."""
    args = vars(build_parser().parse_args(argv))
    config_file, resume = args.pop("config", None), args.pop("resume", None)
    values = load_config_file(config_file) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()} | args
    if resume is not None:
        return resume_config(resume, values)
    return pretrain_config(values), None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Pretrain; returns the last linear-probe and k-NN accuracies."""
    config, resumed = resolve(argv)
    return pretrain(config, resumed)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as error:
        sys.exit(f"python -m train.pretrain: error: {error}")
