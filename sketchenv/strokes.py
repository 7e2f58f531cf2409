"""The stroke model: what one stroke is, read by the rasteriser, game, env, agents and study.

A stroke is one row of numbers. Its first columns are the control points of its primitive,
in canvas coordinates (`x` to the right, `y` down, the canvas is [-1, 1]²):

- ``line``: ``x0, y0, x1, y1`` (the default, and the only kind before strokes had a format);
- ``quadratic``: a quadratic Bézier curve ``x0, y0, x1, y1, x2, y2`` (start, control, end);
- ``cubic``: a cubic Bézier curve ``x0, y0, ..., x3, y3`` (start, two controls, end).

Then, for each option switched on, in this order:

- ``width``: a multiplier of the stroke's thickness (its ink falls off as
  ``exp(-d² / (σ² width²))``), in ``[MIN_WIDTH, MAX_WIDTH]``, 1 = the game's ``sigma2``;
- ``opacity``: the stroke's presence in ``[0, 1]`` multiplying its ink; 0 leaves it out, so a
  sender can choose how many strokes to draw;
- ``colour``: RGB ink ``r, g, b`` in ``[0, 1]``, composited with ``over`` in stroke order
  (the sketch becomes RGB).

`StrokeFormat` is that description; `StrokeFormat.parse("cubic+width+opacity")` and
`str(format)` convert it to and from the name stored in configs, checkpoints and study
databases. A new primitive is one more entry in `PRIMITIVES` (its control-point count);
curves are drawn through `polyline`, whose distance error `flattening_error` bounds
(`chord_counts` says how many chords each piece of a curve gets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MAX_WIDTH",
    "MIN_WIDTH",
    "OPTIONS",
    "PRIMITIVES",
    "StrokeFormat",
    "chord_counts",
    "flattening_error",
    "polyline",
    "strokes_to_svg",
    "strokes_used",
]

PRIMITIVES = {"line": 2, "quadratic": 3, "cubic": 4}  # control points per stroke
OPTIONS = ("width", "opacity", "colour")
MIN_WIDTH, MAX_WIDTH = 0.25, 4.0
# An opacity above this counts as a stroke used: it inks a tenth of what an opaque one does
# (senders trained with the drawing cost keep the strokes they use faint, 0.1-0.3, and
# push the rest to ~0, so a threshold of 1/2 would count none).
USED_OPACITY = 0.1


@dataclass(frozen=True)
class StrokeFormat:
    """The kind of stroke and its per-stroke options (see the module docstring)."""

    primitive: str = "line"
    width: bool = False
    opacity: bool = False
    colour: bool = False

    def __post_init__(self) -> None:
        if self.primitive not in PRIMITIVES:
            raise ValueError(
                f"unknown stroke primitive {self.primitive!r}; choose one of {list(PRIMITIVES)}"
            )
        for option in OPTIONS:
            if not isinstance(getattr(self, option), bool):
                raise TypeError(f"StrokeFormat.{option} must be True or False")

    @classmethod
    def parse(cls, name: str | StrokeFormat) -> StrokeFormat:
        """``"line"``, ``"cubic+width+opacity"``, ... (the primitive, then options) -> format."""
        if isinstance(name, StrokeFormat):
            return name
        if not isinstance(name, str) or not name:
            raise TypeError(f"a stroke format is a name such as 'cubic+opacity', got {name!r}")
        primitive, *options = name.split("+")
        unknown = [option for option in options if option not in OPTIONS]
        if unknown or len(set(options)) != len(options):
            raise ValueError(
                f"bad stroke format {name!r}: options after the primitive must be distinct "
                f"names among {list(OPTIONS)}"
            )
        return cls(primitive, **{option: True for option in options})

    def __str__(self) -> str:
        return "+".join([self.primitive, *(o for o in OPTIONS if getattr(self, o))])

    @property
    def n_points(self) -> int:
        """Control points per stroke (2 for a line)."""
        return PRIMITIVES[self.primitive]

    @property
    def columns(self) -> tuple[str, ...]:
        """The name of each of a stroke's numbers, in order."""
        names = [f"{axis}{i}" for i in range(self.n_points) for axis in "xy"]
        names += ["width"] * self.width + ["opacity"] * self.opacity
        names += ["r", "g", "b"] * self.colour
        return tuple(names)

    @property
    def size(self) -> int:
        """Numbers per stroke."""
        return len(self.columns)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column (low, high), float32 `[size]`: the env's action space and the checks."""
        low = {"width": MIN_WIDTH, "opacity": 0.0, "r": 0.0, "g": 0.0, "b": 0.0}
        high = {"width": MAX_WIDTH, "opacity": 1.0, "r": 1.0, "g": 1.0, "b": 1.0}
        return (
            np.array([low.get(c, -1.0) for c in self.columns], np.float32),
            np.array([high.get(c, 1.0) for c in self.columns], np.float32),
        )

    def points(self, strokes: Tensor) -> Tensor:
        """Control points ``[..., n, n_points, 2]`` of strokes ``[..., n, size]`` (a view)."""
        return strokes[..., : 2 * self.n_points].unflatten(-1, (self.n_points, 2))

    def style(self, strokes: Tensor) -> Tensor:
        """``[..., n, 5]``: each stroke's (width, opacity, r, g, b), 1, 1, 0, 0, 0 where off."""
        column = 2 * self.n_points
        parts = []
        for option, default in (("width", [1.0]), ("opacity", [1.0]), ("colour", [0.0] * 3)):
            if getattr(self, option):
                parts.append(strokes[..., column : column + len(default)])
                column += len(default)
            else:
                parts.append(strokes.new_tensor(default).expand(*strokes.shape[:-1], -1))
        return torch.cat(parts, dim=-1)

    def check(self, strokes: Tensor, name: str = "strokes") -> None:
        """Raise a clear error unless ``strokes`` is a finite ``[..., n, size]`` tensor whose
        options lie in their ranges (coordinates are the caller's to bound)."""
        if not isinstance(strokes, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(strokes).__name__}")
        if not strokes.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got dtype {strokes.dtype}; "
                f"convert with {name}.float()"
            )
        if strokes.ndim < 2 or strokes.shape[-1] != self.size:
            raise ValueError(
                f"{name} must have shape [..., n_strokes, {self.size}] for {self} strokes "
                f"({', '.join(self.columns)}), got {tuple(strokes.shape)}"
            )
        if strokes.device.type == "meta":
            raise ValueError(f"{name} are on the meta device, which holds no values")
        values = strokes.detach()
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise ValueError(f"{name} contain NaN or infinite values")
        column = 2 * self.n_points
        for option, count, low, high in (
            ("width", 1, MIN_WIDTH, MAX_WIDTH),
            ("opacity", 1, 0.0, 1.0),
            ("colour", 3, 0.0, 1.0),
        ):
            if not getattr(self, option):
                continue
            part = values[..., column : column + count]
            column += count
            if part.numel() and (float(part.min()) < low or float(part.max()) > high):
                raise ValueError(
                    f"{name}: {option} must lie in [{low:g}, {high:g}], found "
                    f"[{float(part.min()):.3g}, {float(part.max()):.3g}]; squash it "
                    "(e.g. with a sigmoid) into that range"
                )


def polyline(points: Tensor, tolerance: float | Tensor, max_segments: int = 64) -> Tensor:
    """Bézier control points ``[..., n, m, 2]`` -> points ``[..., n, K + 1, 2]`` on each
    curve (differentiable), whose chords stay within ``tolerance`` (a number or ``[..., n]``).

    Each curve's parameter range is cut into equal pieces (one up to degree 2, else four) and
    piece i gets the fewest equal-parameter chords k_i <= ``max_segments`` / pieces that
    `flattening_error` allows there (`chord_counts`), so a curve gets its chords where it
    bends. A curve's row is padded to K = max Σ k_i by repeating its end point (zero-length
    chords, which change no distance). A line (m = 2) is itself."""
    m = points.shape[-2]
    if m == 2:
        return points
    counts = chord_counts(points.detach(), tolerance, max_segments)  # [..., n, L]
    pieces = counts.shape[-1]
    starts = counts.cumsum(-1) - counts  # index of each piece's first point
    index = torch.arange(int(counts.sum(-1).max()) + 1, dtype=points.dtype, device=points.device)
    # t = (full pieces before a point + its share of its own piece) / pieces, as [..., n, K + 1]
    # tensors: broadcasting small trailing dimensions is slow on CPU.
    t = sum(
        torch.minimum((index - starts[..., i, None]).clamp(min=0), counts[..., i, None])
        / counts[..., i, None]
        for i in range(pieces)
    )
    return _bezier(points, t / pieces)


def _pieces(points: Tensor) -> int:
    """Pieces a Bézier curve ``[..., m, 2]`` is flattened in: 1 up to degree 2, whose B'' is
    constant, else 4 (a cubic's B'' changes along it; more pieces hardly save chords)."""
    return 1 if points.shape[-2] <= 3 else 4


def chord_counts(points: Tensor, tolerance: float | Tensor, max_segments: int = 64) -> Tensor:
    """Chords ``[..., n, pieces]`` that `polyline` gives each piece of each curve ``[..., n, m,
    2]``: the fewest whose `flattening_error` is within ``tolerance``."""
    pieces = _pieces(points)
    scale = _piece_errors(points, pieces)  # error <= scale / k²
    tolerance = torch.as_tensor(tolerance, dtype=points.dtype, device=points.device)
    k = torch.sqrt(scale / tolerance[..., None]).ceil()
    return k.clamp(1, max(max_segments // pieces, 1))


def flattening_error(points: Tensor, segments: Tensor | int) -> Tensor:
    """Upper bound ``[..., n]`` on the distance between each Bézier curve ``[..., n, m, 2]``
    of degree d = m - 1 and its polyline of ``segments`` equal-parameter chords: an int or
    ``[..., n]``, or ``[..., n, L]`` chords in each of L equal parameter pieces (as
    `chord_counts`). Per piece, the chord error h²/8 · max|B''|, where B'' is the degree d - 2
    Bézier curve of the points d(d - 1) Δ²P_j, so on a piece it is at most the largest of its
    control points restricted to the piece (exact for d <= 3). With one piece: d(d - 1)/8 ·
    max_j |P_j - 2P_j+1 + P_j+2| / k²."""
    segments = torch.as_tensor(segments, dtype=points.dtype, device=points.device)
    if segments.ndim < points.ndim - 1:  # chords per curve: one piece
        segments = segments[..., None]
    return (_piece_errors(points, segments.shape[-1]) / segments**2).amax(-1)


def _piece_errors(points: Tensor, pieces: int) -> Tensor:
    """``[..., n, pieces]``: each piece's `flattening_error` with one chord."""
    degree = points.shape[-2] - 1
    if degree == 1:
        return points.new_zeros(*points.shape[:-2], pieces)
    second = (points[..., :-2, :] - 2 * points[..., 1:-1, :] + points[..., 2:, :]) * (
        degree * (degree - 1)
    )
    edges = torch.linspace(0, 1, pieces + 1, dtype=points.dtype, device=points.device)
    largest = _restrict(second, edges[:-1], edges[1:]).norm(dim=-1).amax(-1)
    return largest / (8 * pieces**2)


def _restrict(control: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Control points ``[..., L, q + 1, 2]`` of the Bézier curve ``[..., q + 1, 2]`` on each
    parameter interval [a_i, b_i] (its blossom at q - j a's and j b's)."""
    q = control.shape[-2] - 1
    restricted = []
    for j in range(q + 1):
        c = control[..., None, :, :]
        for t in [a] * (q - j) + [b] * j:
            t = t[:, None, None]
            c = (1 - t) * c[..., :-1, :] + t * c[..., 1:, :]
        restricted.append(c[..., 0, :])
    return torch.stack(restricted, dim=-2)


def _bezier(points: Tensor, t: Tensor) -> Tensor:
    """Points ``[..., K, 2]`` at parameters ``t`` ``[..., K]`` on the Bézier curves ``[..., m,
    2]``, in Bernstein form (exact at t = 0 and 1, the ends), one coordinate at a time."""
    degree = points.shape[-2] - 1
    s = 1 - t
    t_powers, s_powers = [torch.ones_like(t)], [torch.ones_like(t)]
    for _ in range(degree):  # powers by products: a tensor exponent would call pow
        t_powers.append(t_powers[-1] * t)
        s_powers.append(s_powers[-1] * s)
    basis = [math.comb(degree, i) * t_powers[i] * s_powers[degree - i] for i in range(degree + 1)]
    return torch.stack(
        [sum(b * points[..., i, xy, None] for i, b in enumerate(basis)) for xy in (0, 1)], dim=-1
    )


def strokes_used(strokes: Tensor, stroke_format: StrokeFormat) -> Tensor:
    """``[..., n, size]`` -> ``[...]``: strokes drawn, i.e. with opacity above `USED_OPACITY`
    (every stroke when the format has no opacity)."""
    if not stroke_format.opacity:
        return torch.full(strokes.shape[:-2], strokes.shape[-2], device=strokes.device)
    return (stroke_format.style(strokes)[..., 1] > USED_OPACITY).sum(dim=-1)


def strokes_to_svg(
    strokes: Tensor,
    stroke_format: StrokeFormat | str = "line",
    *,
    size: int = 256,
    sigma2: float = 5e-4,
    invert: bool = True,
) -> str:
    """One sketch's strokes ``[n, size]`` as an SVG document ``size`` pixels square, in
    canvas coordinates (viewBox [-1, 1]²): one ``<path>`` per stroke (``L``, ``Q`` or ``C``),
    2σ·width wide (about the rendered line's visible width), with its opacity and colour.
    Paper and default ink follow `render_strokes`: black on white, white on black when
    ``invert`` is False."""
    stroke_format = StrokeFormat.parse(stroke_format)
    stroke_format.check(strokes)
    if strokes.ndim != 2:
        raise ValueError(f"strokes_to_svg draws one sketch [n, size], got {tuple(strokes.shape)}")
    values = strokes.detach().double().cpu()
    style = stroke_format.style(values)
    if not stroke_format.colour and not invert:
        style[:, 2:] = 1.0  # white ink on black paper
    command = {"line": "L", "quadratic": "Q", "cubic": "C"}[stroke_format.primitive]
    paths = []
    for points, (width, opacity, *rgb) in zip(
        stroke_format.points(values).tolist(), style.tolist(), strict=True
    ):
        (x0, y0), *rest = points
        data = f"M {x0:.5g} {y0:.5g} {command} " + " ".join(f"{x:.5g} {y:.5g}" for x, y in rest)
        colour = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in rgb))
        paths.append(
            f"  <path d={quoteattr(data)} stroke={quoteattr(colour)} "
            f'stroke-width="{2 * math.sqrt(sigma2) * width:.5g}" '
            f'stroke-opacity="{opacity:.4g}" fill="none" stroke-linecap="round"/>'
        )
    paper = "white" if invert else "black"
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
            'viewBox="-1 -1 2 2">',
            f'  <rect x="-1" y="-1" width="2" height="2" fill="{paper}"/>',
            *paths,
            "</svg>",
            "",
        ]
    )
