"""Training speed: games per second of one self-play step, and where the time goes.

    nice -n 10 python benchmarks/train.py                  # default and paper configs
    nice -n 10 python benchmarks/train.py --steps 5 --perceptual --threads 1 2

Configurations (batch 100 games = one block of 100 candidates, original game, 20 strokes):
- default: ``python -m train.selfplay`` with no arguments (shapes 32 px, small backbone with
  the shipped visual system, frozen);
- paper: VGG16 features up to relu5_3, frozen, 96 px, dot-product scores, Adam lr 1e-4.
  The weights are random: ImageNet weights cannot be downloaded here, and the time of a
  step does not depend on their values. 96 px ``shapes`` images stand in for STL-10;
- paper+perceptual (``--perceptual``): the paper config plus the perceptual loss on all
  five VGG blocks.

For each, a full ``agents.trainer.train_step`` (forward, backward, optimiser) is timed on
batches sampled beforehand (median of ``--steps`` after one warm-up). Then each part is
timed alone on the same shapes: the rasteriser (forward, backward), the backbone passes
of a step (candidates once, shared with the sender, and the sketches once; forward, then
backward into the sketches and, when trainable, the weights), the perceptual loss when on,
and sampling a batch (``shapes`` draws an image the first time it is used). "rest" is the
step minus the parts inside it: projection, MLPs, scores, loss and the optimiser (parts
are timed alone, so a rest near zero, even slightly negative, means they are the whole
step). Times are wall clock and process CPU time (summed over threads; steadier on a busy
machine, where wall time also counts waiting for a core); shares are of CPU time.
``--threads 1 2`` repeats each config with those torch thread counts, side by side.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from agents.config import SelfPlayConfig
from agents.experiment import fill_defaults, make_agents, make_game
from agents.losses import perceptual_loss
from agents.trainer import train_step

CONFIGS = {
    "default": SelfPlayConfig(),
    "paper": SelfPlayConfig(
        backbone="vgg16",
        weights="none",
        image_size=96,
        freeze_backbone=True,
        score="dot",
        lr=1e-4,
    ),
}
CONFIGS["paper+perceptual"] = CONFIGS["paper"].replace(perceptual_coef=1.0)
PARTS = ("raster fwd", "raster bwd", "backbone fwd", "backbone bwd", "perceptual fwd+bwd")


@dataclass
class Timing:
    wall: float  # seconds, median
    cpu: float


def clock(fn: Callable[[], object]) -> Timing:
    """Wall and CPU seconds of one call of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def median(timings: list[Timing]) -> Timing:
    return Timing(
        statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings)
    )


def measure(fn: Callable[[], object], repeats: int) -> Timing:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls."""
    return median([clock(fn) for _ in range(repeats)])


def measure_split(forward: Callable[[], torch.Tensor], repeats: int) -> tuple[Timing, Timing]:
    """Median times of ``forward()`` and of the backward of its (scalar) result."""
    forwards, backwards, pending = [], [], []
    for _ in range(repeats):
        forwards.append(clock(lambda: pending.append(forward())))
        backwards.append(clock(lambda: pending.pop().backward()))
    return median(forwards), median(backwards)


def benchmark(config: SelfPlayConfig, steps: int) -> dict[str, Timing | int]:
    """Time a training step of ``config`` and its parts; returns name -> Timing."""
    torch.manual_seed(0)
    game = make_game(config, "train")
    config = fill_defaults(config, game)  # as train.selfplay: the shipped visual system, frozen
    blocks = max(1, config.batch_size // game.n_candidates)
    print(
        f"{config.backbone} ({config.weights or 'default'} weights, frozen="
        f"{config.freeze_backbone}), {game.image_size[0]} px {config.dataset}, {game.n_lines} "
        f"strokes, {game.n_candidates} candidates, {blocks * game.n_candidates} games per step, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    generator = torch.Generator().manual_seed(0)
    batches = []
    data = measure(lambda: batches.append(game.sample(blocks, generator)), steps + 1)

    sender, receiver = make_agents(
        config, game.image_size, load_weights=config.weights != "imagenet"
    )
    agents = nn.ModuleDict({"sender": sender, "receiver": receiver}).train()
    params = [p for p in agents.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    backbone = sender.encoder.backbone
    n_taps = len(backbone.tap_names)
    loss_options = {
        "loss": config.loss,
        "perceptual_net": backbone,
        "perceptual_weights": config.perceptual_weights or [1.0] * n_taps,
        "perceptual_coef": config.perceptual_coef,
    }
    queue = iter(batches)

    def step() -> None:
        train_step(
            sender, receiver, game, next(queue), optimizer, params=params,
            grad_clip=config.grad_clip, **loss_options,
        )  # fmt: skip

    step()  # warm-up: allocations, one-time kernel set-up
    results: dict[str, Timing | int] = {"games": blocks * game.n_candidates}
    results["step"] = measure(step, steps)
    batch = batches[0]
    n_sketches = batch.targets.numel()
    candidates = batch.candidates.flatten(0, 1)
    sketch_grad = torch.rand(*batch.targets.shape, 3, *game.image_size)

    def raster() -> torch.Tensor:
        strokes = (torch.rand(*batch.targets.shape, game.n_lines, 4) * 2 - 1).requires_grad_()
        return (game.render(strokes) * sketch_grad).sum()

    def backbone_passes() -> torch.Tensor:
        sketches = torch.rand(n_sketches, 3, *game.image_size, requires_grad=True)
        return backbone(candidates).mean() + backbone(sketches).mean()

    results["raster fwd"], results["raster bwd"] = measure_split(raster, steps)
    results["backbone fwd"], results["backbone bwd"] = measure_split(backbone_passes, steps)
    if config.perceptual_coef > 0:
        images = batch.sender_images.flatten(0, 1)

        def perceptual() -> None:
            sketches = torch.rand(n_sketches, 3, *game.image_size, requires_grad=True)
            perceptual_loss(
                backbone, images, sketches, loss_options["perceptual_weights"]
            ).backward()

        results["perceptual fwd+bwd"] = measure(perceptual, steps)
    results["data (not in step)"] = data
    return results


def rest(results: dict[str, Timing | int], field: str) -> float:
    inside = sum(getattr(results[p], field) for p in PARTS if p in results)
    return getattr(results["step"], field) - inside


def print_table(all_results: dict[str, dict[str, Timing | int]]) -> None:
    """Per part: wall ms | CPU ms and the part's share of the step's CPU time; the last
    columns divide each config's wall time by the first config's."""
    names = list(all_results)
    head = f"{'ms per step: wall | cpu':<24}"
    head += "".join(f"{f'[{i}] {n}':>30}" for i, n in enumerate(names, 1))
    head += "".join(f"{f'[{i}]/[1]':>9}" for i in range(2, len(names) + 1))
    print(head)
    for row in ["step", *PARTS, "rest", "data (not in step)"]:
        cells, walls = [], []
        for r in all_results.values():
            if row == "rest":
                wall, cpu = rest(r, "wall"), rest(r, "cpu")
            elif row in r:
                wall, cpu = r[row].wall, r[row].cpu
            else:
                cells.append(f"{'-':>30}")
                walls.append(None)
                continue
            share = f"{100 * cpu / r['step'].cpu:5.1f}%" if row != "step" else ""
            cells.append(f"{1000 * wall:>10.1f} |{1000 * cpu:>9.1f} {share:>7}")
            walls.append(wall)
        ratios = [  # a residual's ratio means nothing
            f"{w / walls[0]:>9.2f}" if w is not None and walls[0] and row != "rest" else f"{'-':>9}"
            for w in walls[1:]
        ]
        print(f"{row:<24}" + "".join(cells) + "".join(ratios))
    for label, field in (("games/s (wall)", "wall"), ("games/s (cpu time)", "cpu")):
        rates = [r["games"] / getattr(r["step"], field) for r in all_results.values()]
        line = f"{label:<24}" + "".join(f"{g:>30.1f}" for g in rates)
        print(line + "".join(f"{g / rates[0]:>9.3f}" for g in rates[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["default", "paper"])
    parser.add_argument("--perceptual", action="store_true", help="add paper+perceptual")
    parser.add_argument(
        "--threads", type=int, nargs="+", help="torch thread counts to compare [torch's default]"
    )
    args = parser.parse_args()
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("sketchenv.raster").setLevel(logging.INFO)  # which raster path runs
    names = args.configs + (["paper+perceptual"] if args.perceptual else [])
    thread_counts = args.threads or [torch.get_num_threads()]
    print(f"torch {torch.__version__}, {args.steps} steps each")
    all_results = {}
    for name in dict.fromkeys(names):
        config = CONFIGS[name]
        for threads in thread_counts:
            torch.set_num_threads(threads)
            all_results[f"{name}, {threads} thr"] = benchmark(config, args.steps)
    print()
    print_table(all_results)


if __name__ == "__main__":
    main()
