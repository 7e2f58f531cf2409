"""What do the sketches say? Measures of a trained protocol (``train.analyse`` reports them).

* :func:`topographic_similarity`: do similar images get similar sketches? Spearman's rho
  between the pairwise distances of images and of their sketches, with a permutation test.
* :func:`cross_play`: every sender with every receiver on the same games.
* :func:`stroke_ablation`: how much communication is lost when strokes are taken out.
* :func:`drawing_statistics`: stroke lengths, ink per sketch, where the ink goes.

Senders are callables ``images [N, 3, H, W] -> strokes [N, L, size]`` (the game's stroke
format; lines: size 4) and receivers
``(sketches [B, G, 3, H, W], candidates [B, C, 3, H, W]) -> scores [B, G, C]``, as in
:func:`agents.trainer.play`, so every measure can be checked on a case with a known answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.models import Receiver
from sketchenv.game import GameBatch, SketchGame
from sketchenv.raster import render_strokes
from sketchenv.strokes import StrokeFormat, polyline

# A removed stroke is parked here: far outside the canvas, it inks no pixel.
PARKED = -4.0


# ----- topographic similarity ----------------------------------------------------------------
def rank(values: Tensor) -> Tensor:
    """Ranks of a 1-D tensor (0 = smallest), ties sharing their average rank (Spearman)."""
    order = values.argsort()
    _, inverse, counts = torch.unique_consecutive(
        values[order], return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    ranks = torch.empty(values.shape, dtype=torch.float64)
    ranks[order] = (ends - (counts.double() + 1) / 2)[inverse]
    return ranks


def cosine_distances(features: Tensor) -> Tensor:
    """``[N, D] -> [N, N]``: one minus the cosine similarity of every pair."""
    unit = F.normalize(features.flatten(1).double(), dim=1)
    return (1 - unit @ unit.T).clamp_min(0)


def pixel_distances(images: Tensor) -> Tensor:
    """``[N, ...] -> [N, N]``: Euclidean distance between the pixels of every pair."""
    flat = images.flatten(1).double()
    return torch.cdist(flat, flat)


def stroke_set_distances(
    strokes: Tensor, stroke_format: StrokeFormat | str = "line", chunk_elements: int = 2**23
) -> Tensor:
    """``[N, L, size] -> [N, N]``: symmetric Chamfer distance between sketches' sets of
    strokes.

    Each stroke is matched to the nearest stroke of the other sketch (Euclidean distance
    of its numbers, taking the better of the two directions, since a stroke drawn from
    either end is the same), averaged over both sketches: neither the order of the
    strokes nor the order of a stroke's control points matters.
    """
    n, n_lines = strokes.shape[:2]
    strokes = strokes.double()
    m = StrokeFormat.parse(stroke_format).n_points
    reverse = [2 * p + axis for p in reversed(range(m)) for axis in (0, 1)]
    flipped = strokes[..., reverse + list(range(2 * m, strokes.shape[-1]))]
    out = torch.empty(n, n, dtype=torch.float64)
    step = max(1, chunk_elements // (n * n_lines * n_lines))
    for start in range(0, n, step):
        a = strokes[start : start + step]  # [c, L, size]
        d = torch.minimum(segment_distances(a, strokes), segment_distances(a, flipped))
        out[start : start + step] = (d.amin(-1).mean(-1) + d.amin(-2).mean(-1)) / 2
    return out


def segment_distances(a: Tensor, b: Tensor) -> Tensor:
    """``[c, L, k] x [N, M, k] -> [c, N, L, M]`` Euclidean distances of stroke vectors."""
    squared = (
        a.pow(2).sum(-1)[:, None, :, None]
        + b.pow(2).sum(-1)[None, :, None, :]
        - 2 * torch.einsum("ild,jmd->ijlm", a, b)
    )
    return squared.clamp_min(0).sqrt()


def topographic_similarity(
    meaning: Tensor,
    form: Tensor,
    n_permutations: int = 1000,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Spearman's rho between two ``[N, N]`` distance matrices over the pairs ``i < j``, and
    the permutation test's two-sided p-value: the fraction of random relabellings of the
    images (with the observed labelling counted) whose |rho| is at least as large.

    A constant distance matrix (every sketch the same) carries no information: rho = 0.
    """
    n = meaning.shape[0]
    if n < 3 or form.shape != meaning.shape:
        raise ValueError(f"topographic similarity needs two [N, N] matrices with N >= 3, got {n}")
    i, j = torch.triu_indices(n, n, 1)
    meaning_ranks = torch.zeros(n, n, dtype=torch.float64)
    meaning_ranks[i, j] = rank(meaning[i, j])
    meaning_ranks = meaning_ranks + meaning_ranks.T  # ranks of a relabelling, by gathering
    mean = meaning_ranks[i, j].mean()
    form_ranks = rank(form[i, j])
    form_ranks = form_ranks - form_ranks.mean()
    scale = (meaning_ranks[i, j] - mean).norm() * form_ranks.norm()
    if scale == 0:
        return {"rho": 0.0, "p_value": 1.0, "pairs": len(i)}

    def rho(labels: Tensor) -> float:
        return float((meaning_ranks[labels[i], labels[j]] - mean) @ form_ranks / scale)

    observed = rho(torch.arange(n))
    as_large = sum(
        abs(rho(torch.randperm(n, generator=generator))) >= abs(observed) - 1e-12
        for _ in range(n_permutations)
    )
    return {"rho": observed, "p_value": (as_large + 1) / (n_permutations + 1), "pairs": len(i)}


# ----- playing sketches against receivers ---------------------------------------------------
def scorer(receiver: Callable, candidates: Tensor) -> Callable[[Tensor], Tensor]:
    """``sketches [B, G, 3, H, W] -> scores [B, G, C]`` against fixed candidates; a
    :class:`Receiver` embeds the candidates once, however many sketch sets are scored."""
    if isinstance(receiver, Receiver):
        embedded = receiver.embed(receiver.encoder(candidates))
        return lambda sketches: receiver.score(receiver.embed(receiver.encoder(sketches)), embedded)
    return lambda sketches: receiver(sketches, candidates)


def draw(sender: Callable, batch: GameBatch) -> Tensor:
    """The sender's strokes ``[B, G, L, size]`` for a batch of games."""
    strokes = sender(batch.sender_images.flatten(0, 1))
    return strokes.view(*batch.targets.shape, *strokes.shape[1:]).float()


def hits(
    game: SketchGame, score: Callable[[Tensor], Tensor], sketches: Tensor, batch: GameBatch
) -> int:
    """How many games of ``batch`` the receiver wins with ``sketches``."""
    return int((game.choose(score(sketches)) == batch.targets).sum())


@torch.no_grad()
def cross_play(
    senders: Sequence[Callable],
    receivers: Sequence[Callable],
    game: SketchGame,
    batches: Sequence[GameBatch],
) -> Tensor:
    """Communication rate ``[S, R]`` of sender ``i`` with receiver ``j``, all on the same
    games (the diagonal of a run's own pair is its self-play rate)."""
    wins = torch.zeros(len(senders), len(receivers), dtype=torch.float64)
    for batch in batches:
        scores = [scorer(receiver, batch.candidates) for receiver in receivers]
        for s, sender in enumerate(senders):
            sketches = game.render(draw(sender, batch))
            for r, score in enumerate(scores):
                wins[s, r] += hits(game, score, sketches, batch)
    return wins / sum(batch.targets.numel() for batch in batches)


# ----- stroke ablation -----------------------------------------------------------------------
def stroke_ink(game: SketchGame, strokes: Tensor) -> Tensor:
    """``[..., L, size] -> [..., L]``: the ink of each stroke drawn alone, in pixels (its
    alpha: a coloured stroke counts as if it were black)."""
    stroke_format = game.stroke_format
    if stroke_format.colour:
        strokes = strokes[..., :-3]
        stroke_format = dataclasses.replace(stroke_format, colour=False)
    alone = render_strokes(
        strokes.unsqueeze(-2),
        game.image_size,
        sigma2=game.sigma2,
        kernel=game.kernel,
        composite=game.composite,
        invert=False,
        stroke_format=stroke_format,
    )
    return alone.sum((-2, -1))


def remove_strokes(game: SketchGame, strokes: Tensor, removed: Tensor) -> Tensor:
    """``strokes [..., L, size]`` with the strokes where ``removed [..., L]`` is True parked
    off the canvas (all their control points), so the sketch is drawn without them."""
    points = torch.zeros(strokes.shape[-1], dtype=torch.bool, device=strokes.device)
    points[: 2 * game.stroke_format.n_points] = True
    return torch.where(removed.unsqueeze(-1) & points, PARKED, strokes)


@torch.no_grad()
def stroke_ablation(
    sender: Callable, receiver: Callable, game: SketchGame, batches: Sequence[GameBatch]
) -> dict[str, list[float]]:
    """Communication rates with strokes taken out: ``by_index[k]`` without stroke ``k``;
    ``most_ink_first[k]`` / ``least_ink_first[k]`` without the ``k`` strokes of most / least
    ink in each sketch (``k = 0`` is the full sketch, ``k = L`` a blank canvas)."""
    n_lines = game.n_lines
    wins = {
        "by_index": [0] * n_lines,
        "most_ink_first": [0] * (n_lines + 1),
        "least_ink_first": [0] * (n_lines + 1),
    }
    for batch in batches:
        score = scorer(receiver, batch.candidates)
        strokes = draw(sender, batch)
        for k in range(n_lines):
            removed = torch.zeros(strokes.shape[:-1], dtype=torch.bool, device=strokes.device)
            removed[..., k] = True
            wins["by_index"][k] += hits(
                game, score, game.render(remove_strokes(game, strokes, removed)), batch
            )
        order = stroke_ink(game, strokes).argsort(-1, descending=True)
        position = order.argsort(-1)  # 0 = the inkiest stroke of its sketch
        for k in range(n_lines + 1):
            for key, removed in (
                ("most_ink_first", position < k),
                ("least_ink_first", position >= n_lines - k),
            ):
                wins[key][k] += hits(
                    game, score, game.render(remove_strokes(game, strokes, removed)), batch
                )
    n_games = sum(batch.targets.numel() for batch in batches)
    return {key: [won / n_games for won in value] for key, value in wins.items()}


# ----- what the drawings look like ----------------------------------------------------------
def drawing_statistics(game: SketchGame, strokes: Tensor, sketches: Tensor) -> dict[str, Tensor]:
    """Per-stroke lengths (fraction of the canvas width; a curve's along its polyline),
    ink per sketch (fraction of the canvas inked), the mean ink per pixel (where ink goes:
    ``[H, W]``), and the strokes per sketch that ink at least one pixel (a stroke may lie
    off the canvas, or have no opacity)."""
    flat = strokes.reshape(-1, game.n_lines, strokes.shape[-1])
    points = polyline(game.stroke_format.points(flat), 1e-3)
    lengths = points.diff(dim=-2).norm(dim=-1).sum(-1) / 2  # the canvas is 2 wide
    ink = 1 - sketches if game.invert else sketches
    return {
        "stroke_length": lengths.flatten(),
        "ink_per_sketch": ink.mean((-2, -1)),
        "ink_map": ink.mean(0),
        "visible_strokes": (stroke_ink(game, flat) >= 1).sum(-1),
    }
