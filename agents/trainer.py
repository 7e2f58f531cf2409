"""One self-play step and evaluation: sender draws, receiver scores, loss, update.

Works with any sender/receiver that follows the plug-in interface; the built-in
:class:`~agents.models.Sender` / :class:`~agents.models.Receiver` take a faster path that
encodes each block's candidates once and, when the encoder is shared and the senders'
images are the candidates (``original``, ``oo-same``), reuses those features as the
sender's input (the gradients are the same as encoding twice).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.backbones import Backbone
from agents.features import FeatureCache
from agents.losses import (
    check_tap_weights,
    drawing_cost,
    game_loss,
    perceptual_distance,
    perceptual_loss,
)
from agents.models import Encoder, Receiver, Sender
from sketchenv.game import GameBatch, SketchGame
from sketchenv.strokes import strokes_used

SenderFn = Callable[[Tensor], Tensor]
ReceiverFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Outcome:
    """What one batch of games produced."""

    strokes: Tensor  # [B, G, n_lines, stroke size]
    sketches: Tensor  # [B, G, 3, H, W]
    scores: Tensor  # [B, G, C]
    # With play(taps=...): the senders' images' and the sketches' activations at those
    # taps of the frozen backbone, from the receiver's own passes (see GameLoss).
    taps: tuple[list[Tensor], list[Tensor]] | None = None


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: sketchenv runs on cpu or cuda (or auto)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch sees no CUDA device")
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """When ``enabled``: float16 autocast on CUDA, bfloat16 on the CPU (about twice as fast
    for VGG16 on CPUs with AVX512-BF16 or AMX); a no-op otherwise."""
    if not enabled or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(
        device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16
    )


def senders_see_candidates(batch: GameBatch) -> bool:
    """True when game j's sender image is candidate j (``original`` and ``oo-same``)."""
    return batch.sender_ids.shape == batch.candidate_ids.shape and bool(
        torch.equal(batch.sender_ids, batch.candidate_ids)
    )


def play(
    sender: SenderFn,
    receiver: ReceiverFn,
    game: SketchGame,
    batch: GameBatch,
    *,
    taps: Sequence[str] = (),
    features: FeatureCache | None = None,
) -> Outcome:
    """Play a batch of games: the senders draw, the game renders, the receivers score.

    For the built-in agents: ``features`` gives the receiver's frozen backbone maps of the
    dataset images by index (computed once per image); ``taps`` asks the receiver's
    passes over the senders' images and the sketches for those activations too (the
    perceptual loss's, when its network is that frozen backbone), so no second pass is
    needed. Both change no value, only how often the backbone runs."""
    n_blocks, n_games = batch.targets.shape
    if isinstance(sender, Sender) and isinstance(receiver, Receiver):
        encoder = receiver.encoder
        fused = bool(taps) and senders_see_candidates(batch)
        if fused:
            image_taps, candidate_latent = _encode_with_taps(encoder, batch.candidates, taps)
        elif features is not None and features.backbone is encoder.backbone:
            maps = features(batch.candidate_ids.flatten(), batch.candidates.flatten(0, 1))
            candidate_latent = encoder.project(maps, batch.candidate_ids.shape)
        else:
            candidate_latent = encoder(batch.candidates)
        if sender.encoder is encoder and senders_see_candidates(batch):
            sender_latent = candidate_latent
        else:
            sender_latent = sender.encoder(batch.sender_images)
        strokes = sender.decode(sender_latent)
        sketches = render(game, strokes)
        if fused:
            sketch_taps, sketch_latent = _encode_with_taps(encoder, sketches, taps)
        else:
            sketch_latent = encoder(sketches)
        scores = receiver.score(receiver.embed(sketch_latent), receiver.embed(candidate_latent))
        outcome_taps = (image_taps, sketch_taps) if fused else None
    else:
        strokes = sender(batch.sender_images.flatten(0, 1))
        strokes = strokes.view(n_blocks, n_games, *strokes.shape[1:])
        sketches = render(game, strokes)
        scores = receiver(sketches, batch.candidates)
        outcome_taps = None
    if scores.shape != (n_blocks, n_games, batch.candidates.shape[1]):
        raise ValueError(
            f"receiver must return scores [B, G, C] = {[n_blocks, n_games, batch.candidates.shape[1]]}"
            f", got {list(scores.shape)}"
        )
    return Outcome(strokes, sketches, scores, outcome_taps)


def _encode_with_taps(
    encoder: Encoder, images: Tensor, taps: Sequence[str]
) -> tuple[list[Tensor], Tensor]:
    """One backbone pass over ``[..., 3, H, W]`` images: (activations at ``taps``, latents);
    the backbone's last tap is its final map."""
    backbone = encoder.backbone
    *found, maps = backbone(images.flatten(0, -4), taps=[*taps, backbone.tap_names[-1]])
    return found, encoder.project(maps, images.shape[:-3])


def render(game: SketchGame, strokes: Tensor) -> Tensor:
    """Render in float32 even under autocast (exp(-d^2/sigma^2) underflows in float16)."""
    with torch.autocast(strokes.device.type, enabled=False):
        return game.render(strokes.float())


def compute_loss(
    outcome: Outcome,
    batch: GameBatch,
    *,
    loss: str = "hinge",
    perceptual_net: Backbone | None = None,
    perceptual_weights: Sequence[float] = (),
    perceptual_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The game loss plus ``perceptual_coef`` x the perceptual loss (when the coef is > 0)."""
    total = game_loss(outcome.scores.float(), batch.targets, loss)
    parts = {"loss/game": total.item()}
    if perceptual_coef > 0:
        if outcome.taps is not None:  # the receiver's passes gave the activations
            image_taps, sketch_taps = outcome.taps
            used = [w for w in perceptual_weights if w != 0]
            detached = [t.detach() for t in image_taps]
            perceptual = perceptual_distance(detached, sketch_taps, used).mean()
        elif perceptual_net is None:
            raise ValueError("the perceptual loss needs a backbone (perceptual_net)")
        else:
            perceptual = perceptual_loss(
                perceptual_net,
                batch.sender_images.flatten(0, 1),
                outcome.sketches.flatten(0, 1),
                perceptual_weights,
            )
        parts["loss/perceptual"] = perceptual.item()
        total = total + perceptual_coef * perceptual.float()
    parts["loss/total"] = total.item()
    return total, parts


class GameLoss(nn.Module):
    """Playing a batch of games and its loss, as one module: the unit that
    :class:`~torch.nn.parallel.DistributedDataParallel` wraps, so every parameter's
    gradient comes from one forward (the fast path of :func:`play` included)."""

    def __init__(
        self,
        sender: SenderFn,
        receiver: ReceiverFn,
        game: SketchGame,
        *,
        loss: str = "hinge",
        perceptual_net: Backbone | None = None,
        perceptual_weights: Sequence[float] = (),
        perceptual_coef: float = 0.0,
        drawing_cost: float = 0.0,
        drawing_cost_kind: str = "strokes",
        features: FeatureCache | None = None,
    ) -> None:
        super().__init__()
        self.sender, self.receiver, self.game, self.features = sender, receiver, game, features
        self.drawing = (drawing_cost, drawing_cost_kind)
        self.loss_options = {
            "loss": loss,
            "perceptual_net": perceptual_net,
            "perceptual_weights": perceptual_weights,
            "perceptual_coef": perceptual_coef,
        }
        # When the perceptual network is the receiver's own frozen backbone, the
        # receiver's passes give its activations: no second pass (same values; the
        # gradients differ by rounding only, summed in another order).
        backbone = getattr(getattr(receiver, "encoder", None), "backbone", None)
        shared = perceptual_coef > 0 and perceptual_net is backbone is not None
        frozen = shared and not any(p.requires_grad for p in backbone.parameters())
        if frozen:
            check_tap_weights(backbone, perceptual_weights)
        self.taps = (
            tuple(n for n, w in zip(backbone.tap_names, perceptual_weights, strict=True) if w)
            if frozen
            else ()
        )

    def forward(self, batch: GameBatch, weight: float = 1.0) -> tuple[Tensor, Outcome, dict]:
        """``(weight x loss, outcome, scalars of the unweighted loss)``; ``weight`` scales a
        process's share in a distributed step (see :func:`update`)."""
        outcome = play(
            self.sender, self.receiver, self.game, batch, taps=self.taps, features=self.features
        )
        loss, stats = compute_loss(outcome, batch, **self.loss_options)
        coef, kind = self.drawing
        if coef > 0:
            paper = float(self.game.invert)
            cost = drawing_cost(
                outcome.strokes, outcome.sketches, self.game.stroke_format, kind, paper
            )
            loss = loss + coef * cost
            stats.update({"loss/drawing": cost.item(), "loss/total": loss.item()})
        return loss * weight, outcome, stats


def update(
    model: nn.Module,
    batch: GameBatch,
    optimizer: torch.optim.Optimizer,
    *,
    params: Sequence[nn.Parameter],
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float | None = None,
    weight: float = 1.0,
) -> tuple[Outcome, dict[str, float]]:
    """One gradient step of ``model`` (a :class:`GameLoss`, possibly wrapped in
    DistributedDataParallel) on a batch already on its device; returns the outcome and
    scalars (losses, ``comm_rate``, ``class_rate``, ``grad_norm``). DDP averages the
    processes' gradients, so each process passes ``weight`` = processes x its games / all
    games, and the step is the one of the mean loss over all games."""
    device = batch.candidates.device
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, amp):
        loss, outcome, stats = model(batch, weight)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    scaler.step(optimizer)
    scaler.update()
    stats["grad_norm"] = float(grad_norm)
    game = model.module.game if hasattr(model, "module") else model.game
    stats.update(game.score(game.choose(outcome.scores.detach()), batch))
    return outcome, stats


def train_step(
    sender: SenderFn,
    receiver: ReceiverFn,
    game: SketchGame,
    batch: GameBatch,
    optimizer: torch.optim.Optimizer,
    *,
    params: Sequence[nn.Parameter],
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float | None = None,
    **loss_options,
) -> tuple[Outcome, dict[str, float]]:
    """One gradient step on a batch already on the model's device (:func:`update` of a
    :class:`GameLoss`); returns the outcome and scalars (losses, ``comm_rate``,
    ``class_rate``, ``grad_norm``)."""
    model = GameLoss(sender, receiver, game, **loss_options)
    return update(
        model, batch, optimizer, params=params, scaler=scaler, amp=amp, grad_clip=grad_clip
    )


@torch.no_grad()
def evaluate(
    sender: SenderFn,
    receiver: ReceiverFn,
    game: SketchGame,
    batches: Iterable[GameBatch],
    device: torch.device,
    *,
    loss: str = "hinge",
    amp: bool = False,
) -> tuple[dict[str, float], tuple[GameBatch, Outcome] | None]:
    """Mean loss, communication and class rates over ``batches`` (weighted by games), plus
    the first batch and its outcome (for sketch grids)."""
    modules = [m for m in (sender, receiver) if isinstance(m, nn.Module)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    totals = {"loss": 0.0, "comm_rate": 0.0, "class_rate": 0.0, "strokes_used": 0.0}
    n_games, first = 0, None
    try:
        for batch in batches:
            batch = batch.to(device, non_blocking=device.type == "cuda")
            with autocast(device, amp):
                outcome = play(sender, receiver, game, batch)
            count = batch.targets.numel()
            rates = game.score(game.choose(outcome.scores), batch)
            totals["loss"] += game_loss(outcome.scores.float(), batch.targets, loss).item() * count
            totals["comm_rate"] += rates["comm_rate"] * count
            totals["class_rate"] += rates["class_rate"] * count
            used = strokes_used(outcome.strokes, game.stroke_format)
            totals["strokes_used"] += float(used.sum())
            n_games += count
            if first is None:
                first = (batch, outcome)
    finally:
        for m, mode in zip(modules, was_training, strict=True):
            m.train(mode)
    if n_games == 0:
        raise ValueError("evaluate got no batches")
    return {k: v / n_games for k, v in totals.items()} | {"games": n_games}, first
