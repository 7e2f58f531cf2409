"""Speed of the datasets: images/s of the built-in `shapes` (batch and per-item paths, at
several sizes) beside decoding real photos through `imagefolder:` (when available).

Each row is the best of `--repeats` timed passes; the last column is the ratio to the
reference row (`shapes`, batch path, 64 px), so rows compare within one run. `shapes`
always draws on one thread (see `shapes._one_thread`); `--threads` sets torch's threads
for everything else.

    nice -n 10 python benchmarks/datasets.py [--images 2048] [--threads 1] [--photos PATH]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sketchenv.datasets import make_dataset
from sketchenv.datasets.shapes import Shapes

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


def images_per_second(read: Callable[[], object], n_images: int, repeats: int) -> float:
    """Best rate over `repeats` calls of `read`, each producing `n_images` images."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - start)
    return n_images / best


def read_items(dataset, n: int) -> list:
    """The per-item path, as a DataLoader without batching would use it."""
    return [dataset[i] for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per batch-path pass")
    parser.add_argument("--items", type=int, default=200, help="images per per-item pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="an image folder to compare")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows: list[tuple[str, float]] = []
    for size in (32, 64, 96):
        data = Shapes("train", image_size=size)
        data.images(range(64))  # warm up
        rate = images_per_second(
            lambda d=data: d.images(range(args.images)), args.images, args.repeats
        )
        rows.append((f"shapes, batch images(), {size} px", rate))
    data = Shapes("train", image_size=64)
    rate = images_per_second(lambda: read_items(data, args.items), args.items, args.repeats)
    rows.append(("shapes, per item dataset[i], 64 px", rate))
    if args.photos.is_dir():
        photos = make_dataset(f"imagefolder:{args.photos}", "val", image_size=32)
        n = min(args.items * 2, len(photos))
        rate = images_per_second(lambda: read_items(photos, n), n, args.repeats)
        rows.append((f"imagefolder photos ({args.photos.name}), 32 px", rate))

    reference = rows[1][1]
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"| {'path':<48} | {'images/s':>9} | {'vs shapes 64 px':>15} |")
    print(f"|{'-' * 50}|{'-' * 11}|{'-' * 17}|")
    for name, rate in rows:
        print(f"| {name:<48} | {rate:>9,.0f} | {rate / reference:>14.2f}x |")
    epoch = len(data) / reference
    print(f"\nthe default train split (10,000 images, 64 px) takes {epoch:.1f} s to draw in full")


if __name__ == "__main__":
    main()
