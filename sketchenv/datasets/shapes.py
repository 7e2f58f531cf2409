"""The built-in `shapes` dataset: procedurally drawn objects on varied backgrounds.

Nothing is downloaded or stored. Item `i` of a split is drawn on the fly from
`(seed, split, i)` alone, so it is the same image in every process, at every batch
composition and (up to resolution) at every image size. Each image shows one object of
its class (circle, square, triangle, star, ...) with a random colour, size, position and
rotation, on a background that is a gradient, smooth noise or a texture (stripes, checks,
dots), sometimes with a few small distractor marks drawn behind the object. Objects are
analytic signed-distance shapes with one-pixel soft edges (antialiased) and always
contrast with their background, so they are easy to see but no single pixel gives an
image away.

    python -m sketchenv.datasets.shapes --grid shapes.png   # one row of samples per class
"""

from __future__ import annotations

import argparse
import math
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .common import SPLITS, check_image_size, check_split

IMAGE_SIZE = 64
SPLIT_SIZES = {"train": 10_000, "val": 1_000, "test": 1_000}
CHUNK = 256  # images rendered together; bounds the memory of the batch path

# ---------------------------------------------------------------------------------------
# Counter-based randomness: every random number is a hash of (seed, split, index, stream),
# so any item can be drawn alone, in any batch, in any order, with the same result.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-scrambling map of uint64 values."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _keys(seed: int, split: str, purpose: int, indices: np.ndarray) -> np.ndarray:
    """One distinct uint64 key per index, for the stream `purpose` of `(seed, split)`."""
    root = _mix(_mix(seed % 2**64) ^ np.uint64(1 + SPLITS.index(split) + 16 * purpose))
    with np.errstate(over="ignore"):
        return _mix(root + np.asarray(indices, dtype=np.uint64) * _GOLDEN)  # splitmix64 stream


def _uniforms(keys: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """`[len(keys), n]` float64 uniforms in [0, 1): streams `offset .. offset + n - 1`."""
    with np.errstate(over="ignore"):
        streams = np.arange(offset + 1, offset + n + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix(keys[:, None] + streams)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _labels(seed: int, split: str, n_images: int, n_classes: int) -> np.ndarray:
    """Labels in shuffled blocks of `n_classes`: balanced, seeded, cheap, prefix-stable."""
    n_blocks = -(-n_images // n_classes)
    order = np.argsort(_uniforms(_keys(seed, split, 1, np.arange(n_blocks)), n_classes), axis=1)
    return order.reshape(-1)[:n_images]


# ---------------------------------------------------------------------------------------
# The classes: signed distances (negative inside) in object coordinates, where the object
# fits the unit disc, x points right and y points down (up is -y). Built from discs,
# rectangles and convex polygons by union and difference, which keeps them cheap.

Shape = Callable[[Tensor, Tensor], Tensor]


def _length(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y)


def _disc(cx: float, cy: float, radius: float) -> Shape:
    return lambda x, y: _length(x - cx, y - cy) - radius


def _rect(x0: float, y0: float, x1: float, y1: float) -> Shape:
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2

    def distance(x: Tensor, y: Tensor) -> Tensor:
        dx, dy = (x - cx).abs() - half_w, (y - cy).abs() - half_h
        return _length(dx.clamp(min=0), dy.clamp(min=0)) + torch.maximum(dx, dy).clamp(max=0)

    return distance


def _convex(*vertices: Sequence[float]) -> Shape:
    """A convex polygon: the largest signed distance past its edges' lines.

    Exact along the edges (all that antialiasing needs); past a corner it keeps the
    corner sharp instead of rounding it.
    """
    points = np.array(vertices, dtype=np.float64)
    following = np.roll(points, -1, axis=0)
    edges = following - points
    area = np.sum(points[:, 0] * following[:, 1] - following[:, 0] * points[:, 1])
    normals = np.sign(area) * np.stack([edges[:, 1], -edges[:, 0]], 1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    lines = [
        (nx, ny, nx * px + ny * py)
        for (nx, ny), (px, py) in zip(normals.tolist(), points.tolist(), strict=True)
    ]

    def distance(x: Tensor, y: Tensor) -> Tensor:
        nx, ny, offset = lines[0]
        d = x * nx + y * ny - offset
        for nx, ny, offset in lines[1:]:
            d = torch.maximum(d, x * nx + y * ny - offset)
        return d

    return distance


def _union(*shapes: Shape) -> Shape:
    def distance(x: Tensor, y: Tensor) -> Tensor:
        d = shapes[0](x, y)
        for shape in shapes[1:]:
            d = torch.minimum(d, shape(x, y))
        return d

    return distance


def _minus(shape: Shape, hole: Shape) -> Shape:
    return lambda x, y: torch.maximum(shape(x, y), -hole(x, y))


def _star(points: int, outer: float, inner: float) -> Shape:
    """A star: the polygon of its inner corners plus one triangle per tip.

    Each tip's base is pushed a little inside the polygon so the pieces overlap: pieces
    that only touched would leave a faint seam where both distances are zero.
    """

    def at(radius: float, turns: float) -> np.ndarray:
        angle = -math.pi / 2 + 2 * math.pi * turns
        return radius * np.array([math.cos(angle), math.sin(angle)])

    tips = [at(outer, k / points) for k in range(points)]
    corners = [at(inner, (k + 0.5) / points) for k in range(points)]
    spikes = []
    for k, tip in enumerate(tips):
        left, right = corners[k - 1], corners[k]
        spikes.append(_convex(tip, right + 0.25 * (right - tip), left + 0.25 * (left - tip)))
    return _union(_convex(*corners), *spikes)


_LOBE = 0.74 / math.sqrt(2)  # a heart's lobes sit on the upper edges of its diamond

SHAPES: dict[str, Shape] = {
    "circle": _disc(0.0, 0.0, 0.85),
    "square": _rect(-0.7, -0.7, 0.7, 0.7),
    "triangle": _convex((0.0, -0.95), (0.82, 0.55), (-0.82, 0.55)),
    "star": _star(5, 1.0, 0.45),
    "cross": _union(_rect(-0.92, -0.27, 0.92, 0.27), _rect(-0.27, -0.92, 0.27, 0.92)),
    "heart": _union(
        _disc(-0.37, -0.3, _LOBE),
        _disc(0.37, -0.3, _LOBE),
        _convex((0.0, -0.67), (0.74, 0.07), (0.0, 0.81), (-0.74, 0.07)),
    ),
    "arrow": _union(_rect(-0.95, -0.2, 0.15, 0.2), _convex((0.1, -0.6), (0.95, 0.0), (0.1, 0.6))),
    "ring": _minus(_disc(0.0, 0.0, 0.88), _disc(0.0, 0.0, 0.48)),
    "crescent": _minus(_disc(0.0, 0.0, 0.88), _disc(0.4, -0.2, 0.72)),
    "house": _minus(
        _union(_rect(-0.62, -0.15, 0.62, 0.78), _convex((0.0, -0.95), (0.95, -0.1), (-0.95, -0.1))),
        _rect(-0.17, 0.2, 0.17, 0.9),  # the door
    ),
    "tree": _union(
        _convex((0.0, -1.0), (0.5, -0.3), (-0.5, -0.3)),
        _convex((0.0, -0.64), (0.78, 0.42), (-0.78, 0.42)),
        _rect(-0.15, 0.3, 0.15, 0.95),
    ),
    "lightning": _union(
        _convex((0.15, -0.88), (0.52, -0.88), (0.08, 0.1), (-0.45, 0.1)),
        _convex((-0.1, -0.18), (0.48, -0.18), (-0.28, 0.9)),
    ),
}
"""Every object class the generator can draw, by name; `Shapes(classes=...)` picks some."""


# ---------------------------------------------------------------------------------------
# Backgrounds: a map t in [0, 1] per pixel that blends two colours of the same family.

_NOISE_CELLS = (3, 6, 12, 24)  # lattice cells per side of the value-noise octaves
_NOISE_OFFSET = 1_000  # first random stream of the noise lattices
_MARKS, _MARK_OFFSET = 3, 100  # at most this many clutter marks; their first stream


def _frac(v: Tensor) -> Tensor:
    return v - torch.floor(v)


def _triangle_wave(v: Tensor) -> Tensor:
    """1 at integers, 0 halfway between, linear in between."""
    return (_frac(v) - 0.5).abs() * 2


# Each takes coordinates `along` and `across` the pattern's direction ([n, H, W]) and the
# items' parameters `p` ([n, 1, 1] tensors, the items' keys, the pixel pitch).


def _gradient(along: Tensor, across: Tensor, p: dict) -> Tensor:
    return 0.5 + along / (2 * math.sqrt(2))


def _stripes(along: Tensor, across: Tensor, p: dict) -> Tensor:
    t = _triangle_wave(along * p["frequency"] + p["phase_a"])
    return t * t * (3 - 2 * t)  # smoothstep: soft stripes


def _checks(along: Tensor, across: Tensor, p: dict) -> Tensor:
    a = _triangle_wave(along * p["frequency"] + p["phase_a"]) - 0.5
    b = _triangle_wave(across * p["frequency"] + p["phase_b"]) - 0.5
    return (0.5 + 8 * a * b).clamp(0, 1)


def _dots(along: Tensor, across: Tensor, p: dict) -> Tensor:
    a = _frac(along * p["frequency"] + p["phase_a"]) - 0.5
    b = _frac(across * p["frequency"] + p["phase_b"]) - 0.5
    return (0.5 + (0.3 - _length(a, b)) / (p["px"] * p["frequency"])).clamp(0, 1)


def _noise(along: Tensor, across: Tensor, p: dict) -> Tensor:
    """Fractal value noise: octaves of seeded lattices, smoothly upsampled, in [0, 1]."""
    keys, size = p["keys"], along.shape[-1]
    counts = [(cells + 1) ** 2 for cells in _NOISE_CELLS]
    values = torch.from_numpy(_uniforms(keys, sum(counts), _NOISE_OFFSET)).float()
    lattices = values.split(counts, dim=1)
    finest = (_NOISE_CELLS[-1] + 1,) * 2
    total = torch.zeros(len(keys), 1, *finest)
    for octave, (cells, lattice) in enumerate(zip(_NOISE_CELLS, lattices, strict=True)):
        lattice = lattice.view(-1, 1, cells + 1, cells + 1)  # summed on the finest lattice,
        total += 0.5**octave * F.interpolate(lattice, finest, mode="bicubic", align_corners=True)
    t = F.interpolate(total, (size, size), mode="bicubic", align_corners=True)[:, 0]  # then up
    t = t / sum(0.5**octave for octave in range(len(_NOISE_CELLS)))
    return (0.5 + 2.2 * (t - 0.5)).clamp(0, 1)  # stretch: averaging octaves shrinks contrast


_PATTERNS = {
    "gradient": _gradient,
    "noise": _noise,
    "stripes": _stripes,
    "checks": _checks,
    "dots": _dots,
}
BACKGROUNDS = tuple(_PATTERNS)


# ---------------------------------------------------------------------------------------
# Scenes: every random choice of a batch of items, drawn from their keys.


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns `[N, 3]`."""
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6
    return v[:, None] * (1 - s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))


def _float_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _scene(keys: np.ndarray) -> dict[str, Tensor]:
    """The random parameters of each item (object, background, clutter) as tensors."""
    u = _uniforms(keys, 20)
    scale = 0.35 + 0.35 * u[:, 0]  # object radius, canvas units (the canvas spans [-1, 1])
    centre = (2 * u[:, 1:3] - 1) * (1 - 0.85 * scale[:, None])
    angle = 2 * np.pi * u[:, 3]
    colour = _hsv_to_rgb(u[:, 4], 0.55 + 0.45 * u[:, 5], 0.6 + 0.4 * u[:, 6])

    # A muted background, dark or light, whichever contrasts with the object (random if
    # both do); its second colour is a nearby hue, a little closer to mid-grey.
    hue, sat = u[:, 7], 0.4 * u[:, 8]
    dark, light = 0.08 + 0.25 * u[:, 9], 0.68 + 0.27 * u[:, 9]
    gap_dark = np.linalg.norm(colour - _hsv_to_rgb(hue, sat, dark), axis=1)
    gap_light = np.linalg.norm(colour - _hsv_to_rgb(hue, sat, light), axis=1)
    use_light = np.where(
        np.minimum(gap_dark, gap_light) > 0.6, u[:, 10] < 0.5, gap_light > gap_dark
    )
    value = np.where(use_light, light, dark)
    value2 = value + np.where(use_light, -1, 1) * (0.08 + 0.14 * u[:, 11])
    background = _hsv_to_rgb(hue, sat, value)
    background2 = _hsv_to_rgb((hue + 0.25 * (u[:, 12] - 0.5)) % 1, sat, value2)

    # Clutter: in about a third of the images, one to three small strokes or dots.
    n_marks = np.where(u[:, 18] < 0.35, 1 + np.floor(3 * u[:, 19]), 0)
    m = _uniforms(keys, 8 * _MARKS, _MARK_OFFSET).reshape(len(keys), _MARKS, 8)
    mark_start = 1.9 * m[..., 0:2] - 0.95
    mark_end = mark_start + 0.3 * m[..., 2:3] * np.stack(
        [np.cos(2 * np.pi * m[..., 3]), np.sin(2 * np.pi * m[..., 3])], -1
    )
    mark_colour = _hsv_to_rgb(
        m[..., 5].ravel(), 0.2 + 0.6 * m[..., 6].ravel(), 0.2 + 0.75 * m[..., 7].ravel()
    )

    return {
        "scale": _float_tensor(scale),
        "centre": _float_tensor(centre),
        "cos": _float_tensor(np.cos(angle)),
        "sin": _float_tensor(np.sin(angle)),
        "colour": _float_tensor(colour),
        "background": _float_tensor(background),
        "background2": _float_tensor(background2),
        "kind": torch.from_numpy(np.floor(len(BACKGROUNDS) * u[:, 13]).astype(np.int64)),
        "pattern_cos": _float_tensor(np.cos(2 * np.pi * u[:, 14])),
        "pattern_sin": _float_tensor(np.sin(2 * np.pi * u[:, 14])),
        "frequency": _float_tensor(1 + 2 * u[:, 15]),  # pattern periods per canvas unit
        "phase_a": _float_tensor(u[:, 16]),
        "phase_b": _float_tensor(u[:, 17]),
        "n_marks": torch.from_numpy(n_marks.astype(np.int64)),
        "mark_start": _float_tensor(mark_start),
        "mark_end": _float_tensor(mark_end),
        "mark_width": _float_tensor(0.015 + 0.03 * m[..., 4]),
        "mark_colour": _float_tensor(mark_colour.reshape(len(keys), _MARKS, 3)),
    }


# ---------------------------------------------------------------------------------------
# Rendering


def _paint(canvas: Tensor, colour: Tensor, distance: Tensor, px: float) -> None:
    """Composite `colour` [n, 3] over `canvas` [n, 3, H, W] where `distance` < 0, in place.

    Coverage ramps over one pixel across the edge, which antialiases the outline.
    """
    alpha = (0.5 - distance / px).clamp(0, 1).unsqueeze(1)
    canvas.add_(alpha * (colour[:, :, None, None] - canvas))


def _render(keys: np.ndarray, shapes: Sequence[Shape], class_ids: np.ndarray, size: int) -> Tensor:
    """Draw items from their keys and sorted class ids: float `[n, 3, size, size]` in [0, 1].

    Sorted class ids make each class one slice of the batch, drawn in place.
    """
    scene = _scene(keys)
    grid = torch.linspace(-1, 1, size)
    x, y = grid.view(1, 1, size), grid.view(1, size, 1)
    px = 2 / (size - 1)  # pixel pitch in canvas units

    def column(name: str, rows: Tensor | slice, slot: int | None = None) -> Tensor:
        """A per-item parameter of these rows, shaped to broadcast over [n, H, W]."""
        values = scene[name][rows] if slot is None else scene[name][rows, slot]
        return values.reshape(-1, 1, 1) if values.ndim == 1 else values

    canvas = torch.empty(len(keys), 3, size, size)
    for kind, pattern in enumerate(_PATTERNS.values()):
        rows = torch.nonzero(scene["kind"] == kind).view(-1)
        if len(rows) == 0:
            continue
        c, s = column("pattern_cos", rows), column("pattern_sin", rows)
        p = {name: column(name, rows) for name in ("frequency", "phase_a", "phase_b")}
        t = pattern(x * c + y * s, y * c - x * s, {**p, "keys": keys[rows.numpy()], "px": px})
        low, high = (
            scene["background"][rows, :, None, None],
            scene["background2"][rows, :, None, None],
        )
        canvas.index_copy_(0, rows, low + t.unsqueeze(1) * (high - low))

    for slot in range(_MARKS):  # clutter first, so the object is never hidden
        rows = torch.nonzero(scene["n_marks"] > slot).view(-1)
        if len(rows) == 0:
            continue
        start, end = column("mark_start", rows, slot), column("mark_end", rows, slot)
        ax, ay = start[:, 0, None, None], start[:, 1, None, None]
        ex, ey = end[:, 0, None, None] - ax, end[:, 1, None, None] - ay
        t = (((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey + 1e-12)).clamp(0, 1)
        distance = _length(x - ax - t * ex, y - ay - t * ey) - column("mark_width", rows, slot)
        part = canvas[rows]
        _paint(part, column("mark_colour", rows, slot), distance, px)
        canvas[rows] = part

    bounds = np.searchsorted(class_ids, np.arange(len(shapes) + 1)).tolist()
    for shape, first, stop in zip(shapes, bounds[:-1], bounds[1:], strict=True):
        if first == stop:
            continue
        rows = slice(first, stop)
        scale, c, s = column("scale", rows), column("cos", rows), column("sin", rows)
        dx, dy = x - column("centre", rows, 0), y - column("centre", rows, 1)
        distance = shape((dx * c + dy * s) / scale, (dy * c - dx * s) / scale) * scale
        _paint(canvas[rows], scene["colour"][rows], distance, px)
    return canvas.clamp_(0, 1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block.

    Drawing is many small tensor ops; splitting each over threads costs more in
    synchronisation than it gains, and on a busy machine it is 10-50x slower (measured in
    benchmarks/datasets.py). Parallelise across items instead (DataLoader workers).
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Shapes(Dataset):
    """Procedural images of simple objects, one class per object kind; no download.

    Item `i` is `(image, label)`: `image` a float tensor `[3, S, S]` in [0, 1], drawn on
    the fly from `(seed, split, i)`; `label` an index into `classes`. Splits use separate
    random streams, so train, val and test never share an image; labels come in shuffled
    blocks holding every class once, so every split is balanced.

    Args:
        split: "train", "val" or "test".
        image_size: side `S` in pixels (at least 8). One scene at any size.
        seed: picks the whole dataset; the same seed always gives the same images.
        n_images: items in the split (default: 10,000 train, 1,000 val, 1,000 test).
            Item `i` does not depend on it, so a longer split extends a shorter one.
        classes: names from `SHAPES` to draw (default: all of them, in that order).
    """

    def __init__(
        self,
        split: str = "train",
        *,
        image_size: int = IMAGE_SIZE,
        seed: int = 0,
        n_images: int | None = None,
        classes: Sequence[str] | None = None,
    ):
        self.split = check_split(split, "shapes")
        self.image_size = check_image_size(image_size, IMAGE_SIZE)
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels for shapes, got {image_size}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = int(seed)
        n_images = SPLIT_SIZES[split] if n_images is None else n_images
        if isinstance(n_images, bool) or not isinstance(n_images, int | np.integer) or n_images < 1:
            raise ValueError(f"n_images must be a positive int, got {n_images!r}")
        self.classes = list(SHAPES) if classes is None else list(classes)
        unknown = [name for name in self.classes if name not in SHAPES]
        if unknown or len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(
                f"classes must be at least two distinct names from {list(SHAPES)}, "
                f"got {self.classes!r}" + (f" (unknown: {unknown})" if unknown else "")
            )
        self._label_array = _labels(self.seed, split, int(n_images), len(self.classes))
        self.labels: list[int] = self._label_array.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        index = range(len(self))[operator.index(index)]  # bounds check, negative indices
        return self.images([index])[0], self.labels[index]

    def images(self, indices: Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """Draw many items at once (much faster than one by one): float `[N, 3, S, S]`."""
        indices = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices)
        if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
            raise TypeError(
                f"indices must be a 1-D sequence of ints, got shape {indices.shape}, dtype {indices.dtype}"
            )
        if indices.size and not (-len(self) <= indices.min() and indices.max() < len(self)):
            raise IndexError(
                f"indices must lie in [-{len(self)}, {len(self)}) for this split of {len(self)} images"
            )
        indices = indices.astype(np.int64) % len(self)
        class_ids = self._label_array[indices]
        order = np.argsort(class_ids, kind="stable")  # drawn class by class, then put back
        keys = _keys(self.seed, self.split, 0, indices[order])
        shapes = [SHAPES[name] for name in self.classes]  # looked up here: keeps us picklable
        out = torch.empty(len(indices), 3, self.image_size, self.image_size)
        with _one_thread():
            for start in range(0, len(order), CHUNK):
                part = order[start : start + CHUNK]
                drawn = _render(
                    keys[start : start + CHUNK], shapes, class_ids[part], self.image_size
                )
                out[torch.from_numpy(part)] = drawn
        return out

    def __repr__(self) -> str:
        return (
            f"Shapes(split={self.split!r}, {len(self)} images, {len(self.classes)} classes, "
            f"{self.image_size} px, seed={self.seed})"
        )


def load(
    split: str = "train",
    *,
    image_size: int | None = None,
    root: str = "./data",
    download: bool = False,
    seed: int = 0,
) -> Shapes:
    """The registry's entry point; `root` and `download` are unused (nothing to fetch)."""
    return Shapes(split, image_size=check_image_size(image_size, IMAGE_SIZE), seed=seed)


def save_grid(dataset: Shapes, path: str, per_class: int = 8) -> None:
    """Write a PNG with one row of `per_class` samples for each class (atomically)."""
    from torchvision.utils import save_image

    labels = np.asarray(dataset.labels)
    rows = [np.flatnonzero(labels == c)[:per_class] for c in range(len(dataset.classes))]
    if any(len(row) < per_class for row in rows):
        raise ValueError(f"the split has fewer than {per_class} images of some class")
    images = dataset.images(np.concatenate(rows))
    tmp = f"{path}.tmp"
    save_image(images, tmp, nrow=per_class, padding=2, pad_value=1.0, format="png")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, help="PNG file to write (one row per class)")
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=8)
    args = parser.parse_args(argv)
    dataset = Shapes(args.split, image_size=args.image_size, seed=args.seed)
    save_grid(dataset, args.grid, args.per_class)
    print(f"wrote {args.grid}: {dataset}")


if __name__ == "__main__":
    main()
