"""Gradient self-play: a sender learns to draw and a receiver learns to read its sketches.

    python -m train.selfplay                           # shapes, original game, 99 distractors
    python -m train.selfplay --game oo-different --dataset imagefolder:PATH --epochs 30
    python -m train.selfplay --config experiment.toml --seed 3    # flags override the file
    python -m train.selfplay --resume runs/selfplay-original-...  # continue exactly
    torchrun --nproc-per-node 4 -m train.selfplay ...  # 4 processes share every batch

The flags are the fields of :class:`agents.config.SelfPlayConfig`; the training itself is
:func:`agents.selfplay.fit` (callable from Python). The run directory gets
``config.json``, ``metrics.csv``, TensorBoard logs in ``tb/``, one PNG grid of sketches
per validation pass in ``grids/``, and ``last.pt`` / ``best.pt`` (written atomically).
Ctrl-C or SIGTERM stops after the current step and saves ``last.pt``; a second Ctrl-C
aborts at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime

from agents import distributed
from agents.config import SelfPlayConfig, config_from_dict, load_config_file
from agents.selfplay import fit, resume_config
from train.flags import add_config_flags, find_config, run_command


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`SelfPlayConfig` field; unset flags fall back to the file, then
    the defaults."""
    p = argparse.ArgumentParser(
        prog="python -m train.selfplay",
        description=__doc__,
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="JSON or TOML file of options (flags override it)")
    p.add_argument("--resume", help="run directory or checkpoint to continue exactly")
    add_config_flags(p, SelfPlayConfig)
    return p


def resolve_config(argv: Sequence[str] | None) -> tuple[SelfPlayConfig, dict | None]:
    """Defaults < --config file < flags; with --resume, the checkpoint's config (only
    run-control flags may change). Returns the config and the checkpoint to resume."""
    args = vars(build_parser().parse_args(argv))
    config_file, resume = args.pop("config", None), args.pop("resume", None)
    values = load_config_file(find_config(config_file)) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()} | args
    if resume is not None:
        return resume_config(resume, values)
    config = config_from_dict(values)
    if config.output is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        config = config.replace(output=f"runs/selfplay-{config.game}-{stamp}")
    return config, None


def main(argv: Sequence[str] | None = None) -> dict:
    """Train; returns the final validation metrics (also in ``metrics.csv``)."""
    config, resumed = resolve_config(argv)
    metrics = fit(config, resumed=resumed)
    distributed.stop()
    return metrics


if __name__ == "__main__":
    run_command(main, "python -m train.selfplay")
