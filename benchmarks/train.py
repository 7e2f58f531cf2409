"""Training speed: games per second of one self-play step, where the time goes, and what
the fast paths for a frozen backbone buy, side by side.

    nice -n 10 python benchmarks/train.py                  # default and paper configs
    nice -n 10 python benchmarks/train.py --steps 5 --perceptual --threads 1 2

Configurations (batch 100 games = one block of 100 candidates, original game, 20 strokes):
- default: ``python -m train.selfplay`` with no arguments (shapes 32 px, small backbone with
  the shipped visual system, frozen);
- paper: VGG16 features up to relu5_3, frozen, 96 px, dot-product scores, Adam lr 1e-4.
  The weights are random: ImageNet weights cannot be downloaded here, and the time of a
  step does not depend on their values. 96 px ``shapes`` images stand in for STL-10;
- paper+perceptual (``--perceptual``): the paper config plus the perceptual loss on all
  five VGG blocks, its network the agents' backbone (as the paper: both are VGG16).

First table, per config: a full training step as it ran before the fast paths (no
feature cache, the perceptual loss on its own passes, float32, contiguous memory) is timed
on batches sampled beforehand (median of ``--steps`` after one warm-up). Then each part
is timed alone on the same shapes: the rasteriser (forward, backward), the backbone
passes of a step (candidates once, shared with the sender, and the sketches once;
forward, then backward into the sketches and, when trainable, the weights), the
perceptual loss when on, and sampling a batch (``shapes`` draws an image the first time
it is used). "rest" is the step minus the parts inside it: projection, MLPs, scores, loss
and the optimiser (parts are timed alone, so a rest near zero, even slightly negative,
means they are the whole step).

Second table, per config: the same step with the fast paths added one by one (``MODES``):
the feature cache (warm: the candidates' features computed once per image, as after a
run's first epoch; the one-off cost per image is printed) with the perceptual loss fused
into the receiver's passes, then channels-last memory, then bfloat16 autocast. Each row
also gives how far its loss and gradients, on the same first batch from the same initial
weights, are from the plain step's (the loss's relative difference; the largest gradient
difference over the largest gradient).

Times are wall clock and process CPU time (summed over threads; steadier on a busy
machine, where wall time also counts waiting for a core); shares are of CPU time.
``--threads 1 2`` repeats each config with those torch thread counts, side by side.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from agents.config import SelfPlayConfig
from agents.experiment import fill_defaults, make_agents, make_game
from agents.features import FeatureCache
from agents.losses import perceptual_loss
from agents.trainer import GameLoss, autocast, update
from sketchenv.game import GameBatch, SketchGame

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


@dataclass(frozen=True)
class Mode:
    """Which fast paths a step uses (see the module docstring)."""

    cache: bool  # the feature cache, or the perceptual loss fused into the receiver's passes
    channels_last: bool
    bfloat16: bool


MODES = {
    "plain (before)": Mode(cache=False, channels_last=False, bfloat16=False),
    "+ cache / fused": Mode(cache=True, channels_last=False, bfloat16=False),
    "+ channels-last": Mode(cache=True, channels_last=True, bfloat16=False),
    "+ bfloat16": Mode(cache=True, channels_last=True, bfloat16=True),
}


@dataclass
class Setting:
    config: SelfPlayConfig  # with the data's defaults filled in
    game: SketchGame
    batches: list[GameBatch]  # one warm-up batch, then one per timed step
    data: Timing  # sampling one batch


def prepare(config: SelfPlayConfig, steps: int) -> Setting:
    """The game of ``config`` and ``steps + 1`` batches sampled beforehand."""
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
    batches: list[GameBatch] = []
    data = measure(lambda: batches.append(game.sample(blocks, generator)), steps + 1)
    return Setting(config, game, batches, data)


def build_model(setting: Setting, mode: Mode) -> GameLoss:
    """The agents (the same initial weights for every mode) and their loss, as ``mode``
    says; without ``mode.cache`` the perceptual network is a copy of the agents' backbone,
    so its passes are not fused (the step as it was before the fast paths)."""
    config, game = setting.config, setting.game
    torch.manual_seed(0)
    sender, receiver = make_agents(
        config.replace(channels_last=mode.channels_last),
        game.image_size,
        load_weights=config.weights != "imagenet",
    )
    backbone = receiver.encoder.backbone
    model = GameLoss(
        sender,
        receiver,
        game,
        loss=config.loss,
        perceptual_net=backbone if mode.cache else copy.deepcopy(backbone),
        perceptual_weights=config.perceptual_weights or [1.0] * len(backbone.tap_names),
        perceptual_coef=config.perceptual_coef,
    )
    frozen = not any(p.requires_grad for p in backbone.parameters())
    if mode.cache and frozen and not model.taps:
        model.features = FeatureCache(backbone, len(game.labels), game.image_size, 2**40)
    return model.train()


def timed_steps(setting: Setting, model: GameLoss, mode: Mode, steps: int) -> Timing:
    """Median time of a full training step (forward, backward, Adam) after one warm-up."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=setting.config.lr)
    queue = iter(setting.batches)

    def step() -> None:
        update(
            model, next(queue), optimizer, params=params, amp=mode.bfloat16,
            grad_clip=setting.config.grad_clip,
        )  # fmt: skip

    step()  # warm-up: allocations, one-time kernel set-up
    return measure(step, steps)


def benchmark(config: SelfPlayConfig, steps: int) -> dict[str, Timing | int]:
    """Time a plain training step of ``config`` and its parts; returns name -> Timing."""
    setting = prepare(config, steps)
    game, batch = setting.game, setting.batches[0]
    model = build_model(setting, MODES["plain (before)"])
    results: dict[str, Timing | int] = {"games": batch.targets.numel()}
    results["step"] = timed_steps(setting, model, MODES["plain (before)"], steps)
    backbone = model.receiver.encoder.backbone
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
    if setting.config.perceptual_coef > 0:
        images = batch.sender_images.flatten(0, 1)
        weights = model.loss_options["perceptual_weights"]

        def perceptual() -> None:
            sketches = torch.rand(n_sketches, 3, *game.image_size, requires_grad=True)
            perceptual_loss(backbone, images, sketches, weights).backward()

        results["perceptual fwd+bwd"] = measure(perceptual, steps)
    results["data (not in step)"] = setting.data
    return results


def loss_and_gradients(model: GameLoss, batch: GameBatch, bfloat16: bool) -> list[torch.Tensor]:
    """The loss and its gradients on ``batch``, without a step."""
    params = [p for p in model.parameters() if p.requires_grad]
    with autocast(torch.device("cpu"), bfloat16):
        loss, _, _ = model(batch)
    return [loss.detach().float(), *torch.autograd.grad(loss, params)]


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """(loss, gradients) of ``a`` against ``b``: the loss's relative difference, and the
    largest difference of any gradient over the largest gradient of ``b`` (some gradients
    are rounding noise themselves, such as a bias that GroupNorm all but cancels)."""
    loss = float((a[0] - b[0]).abs() / b[0].abs())
    scale = max(float(y.abs().max()) for y in b[1:])
    grads = max(float((x - y).abs().max()) for x, y in zip(a[1:], b[1:], strict=True)) / scale
    return loss, grads


def compare_modes(config: SelfPlayConfig, steps: int) -> None:
    """Print one row per mode: step time, games/s, speed-up over the plain step and the
    distance of its loss and gradients from the plain step's."""
    setting = prepare(config, steps)
    games = setting.batches[0].targets.numel()
    print(
        f"{'mode':<18}{'step wall ms':>13}{'cpu ms':>9}{'games/s':>9}{'x wall':>8}{'x cpu':>7}"
        f"{'loss diff':>11}{'grad diff':>11}"
    )
    first: tuple[Timing, list[torch.Tensor]] | None = None
    for name, mode in MODES.items():
        model = build_model(setting, mode)
        if model.features is not None:  # warm: as after the first epoch
            cache = model.features
            with autocast(torch.device("cpu"), mode.bfloat16):
                start = time.perf_counter()
                for b in setting.batches:
                    cache(b.candidate_ids.flatten(), b.candidates.flatten(0, 1))
                fill = time.perf_counter() - start
            known = int(cache.known.sum())
            print(f"  (cache: {1000 * fill / known:.1f} ms per image, once per run)")
        values = loss_and_gradients(model, setting.batches[0], mode.bfloat16)
        timing = timed_steps(setting, model, mode, steps)
        first = first or (timing, values)
        loss_diff, grad_diff = relative_difference(values, first[1])
        print(
            f"{name:<18}{1000 * timing.wall:>13.0f}{1000 * timing.cpu:>9.0f}"
            f"{games / timing.wall:>9.1f}{first[0].wall / timing.wall:>8.2f}"
            f"{first[0].cpu / timing.cpu:>7.2f}{loss_diff:>11.1e}{grad_diff:>11.1e}",
            flush=True,
        )


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
    for name in dict.fromkeys(names):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            print(f"\nfast paths, {name}, {threads} threads (same batches and initial weights):")
            compare_modes(CONFIGS[name], args.steps)


if __name__ == "__main__":
    main()
