"""Speed of the visual-system work: pretraining images/s per method, and what each
perceptual network costs per self-play step, side by side in one run.

    nice -n 10 python benchmarks/pretrain.py --threads 1
    nice -n 10 python benchmarks/pretrain.py --sizes 32 64 --steps 5

Pretraining: one step of ``agents.pretrain`` (augment the views, backbone forward and
backward, the method's head and loss, AdamW) on a batch of 64 ``shapes`` images, for
each method and image size; images/s counts the batch's images (not views). Perceptual
networks: the perceptual loss between 100 images and 100 sketches (forward, and backward
into the sketches) for every ``--perceptual-net`` kind, beside one default self-play step
of 100 games at the same size (small backbone trained in the game, no perceptual loss),
so the last column is the share a perceptual loss adds to a step. VGG16 weights are
random (none can be downloaded here; the time does not depend on their values). Times
are medians of ``--steps`` after one warm-up, wall clock, in this process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from agents.augment import AUGMENTATIONS
from agents.backbones import make_backbone
from agents.config import SelfPlayConfig
from agents.edges import DrawingNet, EdgeNet
from agents.experiment import make_agents, make_game
from agents.losses import perceptual_loss
from agents.methods import METHODS, make_method, pool
from agents.perceptual import default_tap_weights
from agents.trainer import train_step
from sketchenv.datasets import make_dataset


def median_seconds(fn: Callable[[], object], steps: int) -> float:
    """Median wall seconds of ``fn()`` over ``steps`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pretraining_step(method: str, size: int, batch: int = 64) -> Callable[[], None]:
    """One pretraining step of ``method`` on ``batch`` shapes images at ``size`` px."""
    torch.manual_seed(0)
    images = make_dataset("shapes", image_size=size).images(torch.arange(batch)).float()
    labels = torch.arange(batch) % 12
    backbone = make_backbone("small", "none", width=32)
    head = make_method(method, backbone.output_shape((size, size))[0], 12)
    modules = nn.ModuleList([backbone, head])
    optimizer = torch.optim.AdamW(modules.parameters(), lr=1e-3)
    augment = AUGMENTATIONS[method]
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        views = [augment(images, generator) for _ in range(head.n_views)]
        loss = head([pool(backbone(v)) for v in views], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def perceptual_step(net: nn.Module, size: int, n: int = 100) -> Callable[[], None]:
    """The perceptual loss of ``n`` sketches against ``n`` images, forward and backward."""
    images = make_dataset("shapes", image_size=size).images(torch.arange(n)).float()
    weights = default_tap_weights(net)

    def step() -> None:
        sketches = torch.rand(n, 3, size, size, requires_grad=True)
        perceptual_loss(net, images, sketches, weights).backward()

    return step


def selfplay_step(size: int) -> Callable[[], None]:
    """One default self-play step (100 games, small backbone from scratch) at ``size`` px."""
    torch.manual_seed(0)
    config = SelfPlayConfig(image_size=size, weights="none")
    game = make_game(config, "train")
    sender, receiver = make_agents(config, game.image_size)
    params = [*nn.ModuleList([sender, receiver]).parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    batch = game.sample(1, torch.Generator().manual_seed(0))
    return lambda: train_step(sender, receiver, game, batch, optimizer, params=params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sizes")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up")
    parser.add_argument("--threads", type=int, help="torch CPU threads [torch's default]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps each")

    print("\npretraining, batch 64, small backbone width 32: images/s (and x supervised)")
    print(f"{'method':<12}" + "".join(f"{f'{s} px':>22}" for s in args.sizes))
    rates = {
        m: {s: 64 / median_seconds(pretraining_step(m, s), args.steps) for s in args.sizes}
        for m in METHODS
    }
    for method in METHODS:
        cells = [
            f"{rates[method][s]:>12.0f} ({rates[method][s] / rates['supervised'][s]:.2f}x)"
            for s in args.sizes
        ]
        print(f"{method:<12}" + "".join(f"{c:>22}" for c in cells))

    print("\nperceptual loss, 100 images vs 100 sketches, forward + backward: ms (share of a step)")
    print(f"{'network':<26}" + "".join(f"{f'{s} px':>22}" for s in args.sizes))
    steps = {s: median_seconds(selfplay_step(s), args.steps) for s in args.sizes}
    print(
        f"{'self-play step (no loss)':<26}"
        + "".join(f"{1000 * steps[s]:>16.0f}      " for s in args.sizes)
    )
    nets = {
        "agents / weights file": make_backbone("small", "none", width=32),
        "drawing (no weights)": DrawingNet(),
        "edges (no weights)": EdgeNet(),
        "vgg16": make_backbone("vgg16", "none"),
    }
    for name, net in nets.items():
        net.requires_grad_(False).eval()
        cells = []
        for size in args.sizes:
            seconds = median_seconds(perceptual_step(net, size), args.steps)
            cells.append(f"{1000 * seconds:>12.0f} ({seconds / steps[size]:>5.2f}x)")
        print(f"{name:<26}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
