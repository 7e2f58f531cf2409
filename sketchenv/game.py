"""The referential drawing game as a batched torch core: sampling, rendering and scoring.

One implementation of the rules (SPEC §1), used by the self-play trainer directly and by the
PettingZoo env (one game per episode). Games come in blocks: the `G` games of a block share
one pool of `C` candidates and every candidate is the target of exactly one game (`G == C`),
so a model encodes each candidate once per block, as in the paper's batching.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor

from sketchenv.datasets.cache import ImageCache, check_memory, describe
from sketchenv.raster import COMPOSITES, KERNELS, check_colour_composite, render_strokes, to_rgb
from sketchenv.strokes import StrokeFormat

GAMES = ("original", "oo-same", "oo-different")


@dataclass
class GameBatch:
    """`B` blocks of `G` games sharing `C` candidates per block (images float in [0, 1])."""

    sender_images: Tensor  # [B, G, 3, H, W]
    candidates: Tensor  # [B, C, 3, H, W]
    targets: Tensor  # [B, G] long, index into C
    sender_labels: Tensor  # [B, G] long
    candidate_labels: Tensor  # [B, C] long
    sender_ids: Tensor  # [B, G] long, dataset indices
    candidate_ids: Tensor  # [B, C] long, dataset indices

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GameBatch:
        """Move every tensor to `device`; tensors shared between fields stay shared."""
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> GameBatch:
        """Copy into page-locked memory so that `.to("cuda", non_blocking=True)` overlaps."""
        return self._apply(Tensor.pin_memory)

    def select_games(self, games: Sequence[int] | Tensor) -> GameBatch:
        """Keep only some games of every block (all candidates stay), e.g. one game per env episode."""
        index = torch.as_tensor(games, dtype=torch.long)
        return GameBatch(
            sender_images=self.sender_images[:, index],
            candidates=self.candidates,
            targets=self.targets[:, index],
            sender_labels=self.sender_labels[:, index],
            candidate_labels=self.candidate_labels,
            sender_ids=self.sender_ids[:, index],
            candidate_ids=self.candidate_ids,
        )

    def _apply(self, fn) -> GameBatch:
        done: dict[int, Tensor] = {}
        for f in fields(self):
            tensor = getattr(self, f.name)
            if id(tensor) not in done:
                done[id(tensor)] = fn(tensor)
        return GameBatch(**{f.name: done[id(getattr(self, f.name))] for f in fields(self)})


class SketchGame:
    """Samples blocks of games from a dataset, renders sketches and scores the receiver's choices.

    `dataset` is any torch Dataset of `(image [3, H, W] float in [0, 1], label)`; a `labels`
    (or torchvision-style `targets`) attribute avoids reading every image at start-up.
    Images are kept in memory as 8-bit (the env's observation format), filled as they are
    first read, when the whole dataset takes at most `cache_bytes`; `preload()` (or
    `preload=True`) reads them all at once. 8-bit quantisation is applied with or without the cache, so games never
    depend on memory settings. Randomness comes from `generator` arguments or, when they are
    omitted, from the game's own generator seeded by `seed`; batches are on the CPU (pinned
    when `pin_memory`, by default when CUDA is available) - move them with `batch.to(device)`.
    """

    def __init__(
        self,
        dataset,
        game: str = "original",
        *,
        n_distractors: int | None = None,
        n_lines: int = 20,
        sigma2: float = 5e-4,
        kernel: str = "exp",
        composite: str = "softor",
        invert: bool = True,
        stroke_format: StrokeFormat | str = "line",
        seed: int = 0,
        cache_bytes: int = 2**31,
        preload: bool = False,
        pin_memory: bool | None = None,
    ):
        if game not in GAMES:
            raise ValueError(f"unknown game {game!r}; choose one of {', '.join(GAMES)}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if composite not in COMPOSITES:
            raise ValueError(
                f"unknown composite {composite!r}; choose one of {', '.join(COMPOSITES)}"
            )
        if not _is_int(n_lines) or n_lines < 1:
            raise ValueError(f"n_lines must be a positive integer, got {n_lines!r}")
        if not _is_real(sigma2) or not sigma2 > 0 or math.isinf(sigma2):
            raise ValueError(f"sigma2 must be a positive number, got {sigma2!r}")
        if not _is_int(seed):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        if not isinstance(invert, bool | np.bool_):
            raise TypeError(f"invert must be True or False, got {invert!r}")
        if isinstance(dataset, (str, bytes)) or not (
            hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        ):
            raise TypeError(
                f"dataset must be a torch Dataset of (image, label), got {type(dataset).__name__}; "
                "build one by name with sketchenv.datasets.make_dataset(...)"
            )

        self.dataset = dataset
        self.game = game
        self.n_lines = int(n_lines)
        self.sigma2 = float(sigma2)
        self.kernel = kernel
        self.composite = composite
        self.invert = bool(invert)
        self.stroke_format = StrokeFormat.parse(stroke_format)
        check_colour_composite(self.stroke_format, composite)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.generator = torch.Generator().manual_seed(int(seed))

        side, classes = getattr(dataset, "image_size", None), getattr(dataset, "classes", [])
        if _is_int(side):  # refuse before the first image is made, not with an allocator error
            default = 99 if game == "original" else max(1, len(classes) - 1)
            check_memory(side, (n_distractors if _is_int(n_distractors) else default) + 2)
        self.cache = ImageCache(dataset, cache_bytes)
        self.image_size = self.cache.image_size
        if min(self.image_size) < 2:
            raise ValueError(
                f"the dataset's images are {self.image_size[0]}x{self.image_size[1]} px, too "
                "small to draw on (at least 2x2): resize them (image_size=, --image-size)"
            )
        self.labels = self.cache.labels
        n_items = len(dataset)
        classes = getattr(dataset, "classes", None)
        self.n_classes = len(classes) if classes is not None else int(self.labels.max()) + 1
        if self.labels.min() < 0 or self.labels.max() >= self.n_classes:
            raise ValueError(
                f"dataset labels must lie in [0, {self.n_classes}) (one per class in "
                f"dataset.classes), found [{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        # Dataset indices grouped by class: members[offsets[c] : offsets[c] + counts[c]].
        self._members = torch.argsort(self.labels, stable=True)
        self._counts = torch.bincount(self.labels, minlength=self.n_classes)
        self._offsets = torch.cumsum(self._counts, 0) - self._counts
        self._rank = torch.empty_like(self._members)  # position of each index within its class
        self._rank[self._members] = (
            torch.arange(n_items) - self._offsets[self.labels[self._members]]
        )

        self.n_distractors = self._check_n_distractors(n_distractors)
        self.n_candidates = self.n_distractors + 1
        if preload:
            self.preload()

    def preload(self, chunk: int = 1024) -> bool:
        """Read every image into memory now; False (and nothing read) when over `cache_bytes`."""
        return self.cache.preload(chunk)

    # ----- sampling -------------------------------------------------------------------------
    def sample(
        self,
        n_blocks: int,
        generator: torch.Generator | None = None,
        *,
        share: tuple[int, int] = (0, 1),
    ) -> GameBatch:
        """Draw `n_blocks` independent random blocks of games. `share=(rank, world)` keeps
        only process `rank`'s share of them (see `share_blocks`); the draws are the same."""
        sender_ids, candidate_ids, targets = self.sample_ids(n_blocks, generator)
        mine = share_blocks(n_blocks, *share)
        candidates = candidate_ids[mine]
        senders = candidates if sender_ids is candidate_ids else sender_ids[mine]
        return self._batch(senders, candidates, targets[mine])

    def sample_ids(
        self, n_blocks: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What `sample` draws, as dataset ids without the images: `(sender_ids [B, G],
        candidate_ids [B, C], targets [B, G])`; the same random draws as `sample`."""
        g = self._generator(generator)
        if not _is_int(n_blocks) or n_blocks < 1:
            raise ValueError(f"n_blocks must be a positive integer, got {n_blocks!r}")
        if self.game == "original":
            n_items = len(self.labels)
            blocks = [
                torch.randperm(n_items, generator=g)[: self.n_candidates] for _ in range(n_blocks)
            ]
            candidate_ids = torch.stack(blocks)
        else:
            classes = self._draw_classes(n_blocks, g)
            within = _uniform_below(self._counts[classes], g)
            candidate_ids = self._members[self._offsets[classes] + within]
        sender_ids = self._sender_ids(candidate_ids, g)
        return sender_ids, candidate_ids, self._all_targets(n_blocks)

    def sample_game(self, generator: torch.Generator | None = None) -> GameBatch:
        """One game: a random game of a random block (`B = G = 1`, `C` candidates)."""
        return self._batch(*self.sample_game_ids(generator))

    def sample_game_ids(
        self, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What `sample_game` draws, as ids: `(sender_ids [1, 1], candidate_ids [1, C],
        targets [1, 1])` (for the vectorised env, which reads the images itself)."""
        g = self._generator(generator)
        sender_ids, candidate_ids, targets = self.sample_ids(1, g)
        game = int(torch.randint(self.n_candidates, (1,), generator=g))
        return sender_ids[:, [game]], candidate_ids, targets[:, [game]]

    def epoch(
        self,
        blocks_per_batch: int,
        generator: torch.Generator | None = None,
        *,
        share: tuple[int, int] = (0, 1),
    ) -> Iterator[GameBatch]:
        """About one pass over the dataset in batches of `blocks_per_batch` blocks.

        `original`: a shuffled permutation cut into blocks (every image is a candidate and a
        target once; the remainder that does not fill a block is left out). OO games: per-class
        shuffled queues give one image per chosen class per block (classes re-shuffled when
        exhausted), `len(dataset) // n_candidates` blocks. All random draws happen when this is
        called, so interleaving with `sample` stays deterministic. `share=(rank, world)`
        yields only process `rank`'s share of each batch's blocks (`share_blocks`; possibly
        none), so `world` processes together play exactly the batches of one.
        """
        g = self._generator(generator)
        if not _is_int(blocks_per_batch) or blocks_per_batch < 1:
            raise ValueError(
                f"blocks_per_batch must be a positive integer, got {blocks_per_batch!r}"
            )
        n_blocks = self.blocks_per_epoch
        if self.game == "original":
            candidate_ids = torch.randperm(len(self.labels), generator=g)
            candidate_ids = candidate_ids[: n_blocks * self.n_candidates].view(n_blocks, -1)
        else:
            candidate_ids = self._draw_from_queues(self._draw_classes(n_blocks, g), g)
        sender_ids = self._sender_ids(candidate_ids, g)
        return self._batches(sender_ids, candidate_ids, blocks_per_batch, share)

    @property
    def blocks_per_epoch(self) -> int:
        """Number of blocks `epoch` yields (batches: ceil(blocks_per_epoch / blocks_per_batch))."""
        return len(self.labels) // self.n_candidates

    # ----- rendering and scoring ------------------------------------------------------------
    def render(self, strokes: Tensor) -> Tensor:
        """Strokes `[..., n_lines, stroke_format.size]` (coordinates in [-1, 1]) -> RGB
        sketches `[..., 3, H, W]`, differentiably."""
        if not isinstance(strokes, Tensor) or not strokes.is_floating_point():
            raise TypeError(f"strokes must be a floating-point tensor, got {describe(strokes)}")
        size = self.stroke_format.size
        if strokes.dim() < 2 or tuple(strokes.shape[-2:]) != (self.n_lines, size):
            raise ValueError(
                f"strokes must have shape [..., {self.n_lines}, {size}] (n_lines strokes of "
                f"{', '.join(self.stroke_format.columns)}), got {list(strokes.shape)}"
            )
        sketch = render_strokes(
            strokes,
            self.image_size,
            sigma2=self.sigma2,
            kernel=self.kernel,
            composite=self.composite,
            invert=self.invert,
            stroke_format=self.stroke_format,
        )
        return sketch if self.stroke_format.colour else to_rgb(sketch)

    def choose(self, scores: Tensor) -> Tensor:
        """The receiver's picks: argmax over candidates, `[B, G, C] -> [B, G]`."""
        if (
            not isinstance(scores, Tensor)
            or scores.dim() < 1
            or scores.shape[-1] != self.n_candidates
        ):
            raise ValueError(
                f"scores must be a tensor [..., {self.n_candidates}] (one per candidate), "
                f"got {describe(scores)}"
            )
        return scores.argmax(dim=-1)

    def score(self, choices: Tensor, batch: GameBatch) -> dict[str, float]:
        """Communication rate (target picked) and class rate (picked image has the target's class)."""
        if (
            not isinstance(choices, Tensor)
            or choices.dtype.is_floating_point
            or choices.dtype == torch.bool
        ):
            raise TypeError(
                f"choices must be an integer tensor of candidate indices, got {describe(choices)}"
            )
        if choices.shape != batch.targets.shape:
            raise ValueError(
                f"choices must have the targets' shape {list(batch.targets.shape)} ([B, G]), "
                f"got {list(choices.shape)}"
            )
        choices = choices.to(batch.targets.device, torch.long)
        n_candidates = batch.candidate_ids.shape[1]
        if choices.numel() and (choices.min() < 0 or choices.max() >= n_candidates):
            raise ValueError(
                f"choices must lie in [0, {n_candidates}), got [{int(choices.min())}, {int(choices.max())}]"
            )
        picked = batch.candidate_labels.gather(1, choices)
        target_labels = batch.candidate_labels.gather(1, batch.targets)
        return {
            "comm_rate": (choices == batch.targets).float().mean().item(),
            "class_rate": (picked == target_labels).float().mean().item(),
        }

    def __repr__(self) -> str:
        return (
            f"SketchGame({self.game!r}, {self.n_distractors} distractors, {self.n_lines} lines, "
            f"{self.image_size[0]}x{self.image_size[1]} px, {self.n_classes} classes, "
            f"dataset={self.dataset!r})"
        )

    # ----- internals ------------------------------------------------------------------------
    def _check_n_distractors(self, n_distractors: int | None) -> int:
        original = self.game == "original"
        if not original and self.n_classes < 2:
            raise ValueError(
                f"{self.game} needs at least 2 classes (one candidate per class); the dataset "
                f"has {self.n_classes}: use the original game or a dataset with more classes"
            )
        if n_distractors is None:
            n_distractors = 99 if original else self.n_classes - 1
        if not _is_int(n_distractors) or n_distractors < 1:
            raise ValueError(f"n_distractors must be a positive integer, got {n_distractors!r}")
        n_candidates = n_distractors + 1
        if original and n_candidates > len(self.labels):
            raise ValueError(
                f"the original game needs n_distractors + 1 <= dataset size; got {n_distractors} "
                f"distractors for {len(self.labels)} images: lower n_distractors"
            )
        if not original:
            if n_candidates > self.n_classes:
                raise ValueError(
                    f"{self.game} needs one candidate per class, so n_distractors + 1 <= "
                    f"{self.n_classes} classes; got n_distractors={n_distractors}"
                )
            needed = 2 if self.game == "oo-different" else 1
            short = (self._counts < needed).nonzero().flatten().tolist()
            if short:
                names = getattr(self.dataset, "classes", None) or list(range(self.n_classes))
                listed = ", ".join(str(names[c]) for c in short[:10]) + (
                    f" and {len(short) - 10} more" if len(short) > 10 else ""
                )
                raise ValueError(
                    f"{self.game} needs at least {needed} image(s) in every class; "
                    f"{len(short)} class(es) have fewer: {listed}. Use a dataset/split with them "
                    "or the original game"
                )
        return int(n_distractors)

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is None:
            return self.generator
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError(
                "generator must be a CPU torch.Generator (batches are sampled on the CPU)"
            )
        return generator

    def _draw_classes(self, n_blocks: int, g: torch.Generator) -> Tensor:
        """`[n_blocks, C]` distinct classes per block, in random order."""
        return torch.stack(
            [
                torch.randperm(self.n_classes, generator=g)[: self.n_candidates]
                for _ in range(n_blocks)
            ]
        )

    def _draw_from_queues(self, classes: Tensor, g: torch.Generator) -> Tensor:
        """One image per (block, class) slot, each class served from its own shuffled queue."""
        flat = classes.flatten()
        ids = torch.empty_like(flat)
        for c in range(self.n_classes):
            slots = (flat == c).nonzero().flatten()
            if len(slots) == 0:
                continue
            count = int(self._counts[c])
            members = self._members[self._offsets[c] : self._offsets[c] + count]
            n_rounds = math.ceil(len(slots) / count)
            queue = torch.cat(
                [members[torch.randperm(count, generator=g)] for _ in range(n_rounds)]
            )
            ids[slots] = queue[: len(slots)]
        return ids.view_as(classes)

    def _sender_ids(self, candidate_ids: Tensor, g: torch.Generator) -> Tensor:
        """Game j's sender image: candidate j, or (oo-different) another image of its class."""
        if self.game != "oo-different":
            return candidate_ids
        labels = self.labels[candidate_ids]
        other = _uniform_below(self._counts[labels] - 1, g)
        other += (other >= self._rank[candidate_ids]).long()  # skip the candidate itself
        return self._members[self._offsets[labels] + other]

    def _all_targets(self, n_blocks: int) -> Tensor:
        return torch.arange(self.n_candidates).repeat(n_blocks, 1)

    def _batches(
        self,
        sender_ids: Tensor,
        candidate_ids: Tensor,
        blocks_per_batch: int,
        share: tuple[int, int],
    ):
        same = sender_ids is candidate_ids  # keep the identity: images are then read once
        for start in range(0, len(candidate_ids), blocks_per_batch):
            mine = share_blocks(min(blocks_per_batch, len(candidate_ids) - start), *share)
            mine = slice(start + mine.start, start + mine.stop)
            candidates = candidate_ids[mine]
            senders = candidates if same else sender_ids[mine]
            yield self._batch(senders, candidates, self._all_targets(len(candidates)))

    def _batch(self, sender_ids: Tensor, candidate_ids: Tensor, targets: Tensor) -> GameBatch:
        candidates = self._float_images(candidate_ids)
        if sender_ids is candidate_ids:
            sender_images = candidates  # paper batching: the candidates are the senders' images
        else:
            sender_images = self._float_images(sender_ids)
        return GameBatch(
            sender_images=sender_images,
            candidates=candidates,
            targets=targets,
            sender_labels=self.labels[sender_ids],
            candidate_labels=self.labels[candidate_ids],
            sender_ids=sender_ids,
            candidate_ids=candidate_ids,
        )

    def _float_images(self, ids: Tensor) -> Tensor:
        images = self.cache.images(ids).float().div_(255)
        return images.pin_memory() if self.pin_memory else images


def share_blocks(n_blocks: int, rank: int, world: int) -> slice:
    """Which of `n_blocks` blocks process `rank` of `world` plays: consecutive shares whose
    sizes differ by at most one (the first `n_blocks % world` ranks get one more; a rank
    gets none when `n_blocks < world`)."""
    if not (_is_int(world) and world >= 1 and _is_int(rank) and 0 <= rank < world):
        raise ValueError(f"share must be (rank, world) with 0 <= rank < world, got {(rank, world)}")
    size, extra = divmod(n_blocks, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def _uniform_below(counts: Tensor, g: torch.Generator) -> Tensor:
    """Independent uniform integers in [0, counts) elementwise."""
    u = torch.rand(counts.shape, generator=g, dtype=torch.float64)
    return (u * counts).long().minimum(counts - 1)


def _is_real(value) -> bool:
    """A real number (numpy's too), but not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool | np.bool_)


def _is_int(value) -> bool:
    """An integer (numpy's too, as RL libraries pass them), but not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool | np.bool_)
