"""What every training run folder needs: atomic files, seeded data order, clean stops.

Shared by self-play (:mod:`train.selfplay`) and pretraining (:mod:`agents.pretrain`), so
both write their files the same way, replay the same data after ``--resume`` and stop
the same way on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from agents.files import write_atomic


def write_csv(path: str | Path, rows: list[dict], fields: Sequence[str]) -> None:
    """All ``rows`` as a CSV with the columns ``fields`` (others ignored), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())


THREADS = 1
"""torch CPU threads of a training run unless ``--threads`` says otherwise. Measured on
the 2-core machine (``benchmarks/train.py --threads 1 2``): for the small model two
threads were 1.6x faster than one on an idle machine but 0.68x (and in one report several
times slower) beside another busy process; one thread is never far off, and a fixed count
keeps CPU runs repeating exactly (the count is part of what a result depends on)."""
THREADS_HELP = "torch CPU threads; 0 = torch's default, one per core"


def set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads in this process (0 leaves torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def sketch_grid(images: torch.Tensor, sketches: torch.Tensor, n: int = 16) -> torch.Tensor:
    """Pairs (sender's image, its sketch) of the first ``n`` of ``[N, 3, H, W]`` images and
    sketches, four pairs per row; small images are enlarged (nearest neighbour) to at least
    96 px so strokes show."""
    pairs = torch.stack([images[:n].cpu().float(), sketches[:n].cpu().float()], 1).flatten(0, 1)
    scale = max(1, math.ceil(96 / pairs.shape[-1]))
    pairs = pairs.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return make_grid(pairs, nrow=8, padding=2, pad_value=0.5)


def write_png(path: str | Path, image: torch.Tensor) -> None:
    """A ``[3, H, W]`` image in [0, 1] as a PNG file, atomically."""
    png = io.BytesIO()
    save_image(image, png, format="png")
    write_atomic(path, png.getvalue())


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator that depends on ``keys`` only (for example ``(seed, epoch)``), so a
    resumed run draws exactly what an uninterrupted one would have drawn."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to zero at ``total`` steps."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "constant":
        return warm
    return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def epoch_bar(batches: Iterable, start: int, total: int, epoch: int, epochs: int) -> tqdm:
    """A progress bar over an epoch's ``batches`` from batch ``start`` on (a resumed run
    skips what it already did); silent when the output is not a terminal."""
    return tqdm(
        islice(batches, start, None),
        total=total,
        initial=start,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=None,
        dynamic_ncols=True,
    )


def stop_reason_now(
    interrupted: dict, config: Any, step: int, start_time: float, after_step: bool = True
) -> str | None:
    """Why a training loop must stop now, if it must: a signal (``stop_on_signal``'s
    flag), ``config.max_steps`` reached (when the config has one), or
    ``config.time_budget`` seconds since ``start_time`` (``time.monotonic()``) spent; the
    budget is checked only ``after_step``, so every run makes at least one step."""
    if interrupted["signal"]:
        return interrupted["signal"]
    max_steps = getattr(config, "max_steps", None)
    if max_steps is not None and step >= max_steps:
        return "max_steps"
    out_of_time = config.time_budget and time.monotonic() - start_time > config.time_budget
    return "time_budget" if after_step and out_of_time else None


@contextmanager
def stop_on_signal() -> Iterator[dict]:
    """Ctrl-C / SIGTERM set ``flag["signal"]`` (the loop stops after its step and saves);
    a second one raises KeyboardInterrupt at once."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name
        print(f"\n{flag['signal']}: stopping after this step (again to abort)", file=sys.stderr)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def schedule_horizon(
    epochs: int, steps_per_epoch: int, resumed: dict[str, Any] | None, cosine: bool = True
) -> int:
    """The learning-rate schedule's length in steps: laid out by the run's first
    ``--epochs`` and kept on ``--resume`` (a cosine schedule that has reached 0 cannot
    be stretched: resuming with more epochs than it spans is refused)."""
    total = epochs * steps_per_epoch
    if resumed is None:
        return total
    horizon = resumed["progress"].get("schedule_steps", total)
    if total > horizon and cosine:
        raise ValueError(
            f"--epochs {epochs} goes past the cosine schedule this run was started "
            f"with ({horizon // steps_per_epoch} epochs; its learning rate reaches 0 "
            "there): resume with at most that many, or start a new run"
        )
    return horizon
