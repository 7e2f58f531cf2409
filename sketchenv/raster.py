"""Differentiable stroke rasteriser: strokes in canvas coordinates -> greyscale or RGB sketch.

Conventions (see docs/architecture.md and `sketchenv.strokes`): a stroke is a row of numbers
described by a `StrokeFormat`: control points in `[-1, 1]` (a line `(x0, y0, x1, y1)` by
default, or a quadratic or cubic Bézier curve), then optional width, opacity and colour. `x`
runs along columns (left -1 to right +1), `y` along rows (top -1 to bottom +1); pixel centres
sit on `linspace(-1, 1, W)` along x and `linspace(-1, 1, H)` along y.

Maths (SPEC §2): for pixel `p` and segment `a -> b`, `t = clamp((p-a)·(b-a) / |b-a|², 0, 1)`,
`d² = |p - a - t (b-a)|²` (a zero-length segment is a dot). A curve is drawn through its
polyline (`sketchenv.strokes.polyline`: chords within `curve_tolerance` σ·width of the curve,
so its distance is within that of the exact one) and `d²` is the least over its chords. Per-
stroke ink `r = opacity · k(d² / (σ² width²))` with `k(z) = exp(-z)` ("exp") or
`2 sigmoid(-z)` ("sigmoid"), strokes composited per pixel:

- "softor": `I = 1 - Π_i (1 - r_i)` (the paper's choice).
- "over": painter's alpha-over in stroke order, `I_k = r_k + (1 - r_k) I_{k-1}`, `I_0 = 0`,
  with ink colour 1 and alpha `r_k` (the paper code's `over`). For single-colour ink this *is*
  soft-or (`1 - I_k = (1 - r_k)(1 - I_{k-1})`), so it shares soft-or's kernel; the tests check
  the identity against the literal recursion.
- "max": smooth maximum `I = Σ_i w_i r_i` with `w = softmax(r / T)`, `T = MAX_TEMPERATURE`
  (0.05): it stays in `[0, max_i r_i]`, tends to the hard max as `T -> 0`, and passes gradient
  to every stroke that overlaps a pixel (the paper code's `smoothmax`, whose default T = 1 is
  far from a max for 20 strokes).
- Coloured strokes are composited `over` in stroke order (RGB `C_k = (1 - r_k) C_{k-1} +
  r_k c_k`) onto white (black when `invert=False`); "softor" and "over" both mean that, "max"
  is refused.

`invert=True` returns `1 - I`: black strokes on white, as in the paper.

Speed and memory: a custom autograd Function keeps only per-pixel aggregates and recomputes each
stroke's ink in backward. On CPU a small C++ kernel (`_raster_cpu`, compiled on first use and
cached) visits only the pixels within the distance where a stroke's ink drops below a quarter of
the float epsilon (~4.2 σ·width in float32, so 1 - r rounds to 1 beyond it: values are
unchanged and the dropped gradient terms are ~1e-7 of the largest). Elsewhere (no compiler,
GPU) a chunked dense PyTorch path computes the same maths, in float32 for half-precision
inputs. One log line on logger "sketchenv.raster" says which path runs;
SKETCHENV_RASTER=auto|torch|kernel chooses. Gradients are first order only (double backward
raises).
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sketchenv import _raster_cpu
from sketchenv._raster_reference import MAX_TEMPERATURE
from sketchenv.strokes import StrokeFormat, polyline

__all__ = [
    "COMPOSITES",
    "CURVE_TOLERANCE",
    "KERNELS",
    "MAX_TEMPERATURE",
    "render_strokes",
    "to_rgb",
]

KERNELS = ("exp", "sigmoid")
COMPOSITES = ("softor", "over", "max")

logger = logging.getLogger("sketchenv.raster")

# Dense PyTorch path: at most this many (sketch, stroke, pixel) elements per chunk (about 25
# temporaries of this size are alive at once).
_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 22}
# Largest |coordinate| accepted: far beyond the canvas, yet far from float overflow in d².
_MAX_COORDINATE = 1e6
# A curve's polyline stays within this many σ·width of it: the ink then differs from the exact
# curve's by at most 0.086 (exp kernel: |dk/dd| <= sqrt(2/e) / σ).
CURVE_TOLERANCE = 0.1


def render_strokes(
    strokes: Tensor,
    image_size: int | Sequence[int],
    *,
    sigma2: float = 5e-4,
    kernel: str = "exp",
    composite: str = "softor",
    invert: bool = True,
    stroke_format: StrokeFormat | str = "line",
    curve_tolerance: float = CURVE_TOLERANCE,
) -> Tensor:
    """Rasterise strokes `[..., n_strokes, stroke_format.size]` into sketches in [0, 1]:
    greyscale `[..., H, W]`, or RGB `[..., 3, H, W]` when the format has colour.

    Differentiable (once) with respect to `strokes`; never keeps a sketches × strokes × pixels
    tensor. On CPU a C++ kernel, compiled on first use and cached, does the work when a compiler
    is present; otherwise, and on GPU, a chunked PyTorch path (see `_use_cpu_kernel`).
    """
    height, width = _check_image_size(image_size)
    stroke_format = StrokeFormat.parse(stroke_format)
    _check_strokes(strokes, stroke_format)
    sigma2 = _check_sigma2(sigma2)
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}; choose one of {COMPOSITES}")
    check_colour_composite(stroke_format, composite)
    if not isinstance(invert, bool):
        raise TypeError(f"invert must be a bool, got {type(invert).__name__}")
    if not (isinstance(curve_tolerance, numbers.Real) and 0 < curve_tolerance < math.inf):
        raise ValueError(f"curve_tolerance must be a number > 0, got {curve_tolerance!r}")

    batch_shape, n_strokes = strokes.shape[:-2], strokes.shape[-2]
    # Half precision (GPU) is computed in float32; float64 stays float64 (gradcheck).
    compute_dtype = torch.float64 if strokes.dtype == torch.float64 else torch.float32
    flat = strokes.reshape(math.prod(batch_shape), n_strokes, strokes.shape[-1]).to(compute_dtype)
    style = stroke_format.style(flat)
    tolerance = curve_tolerance * math.sqrt(sigma2) * style[..., 0].detach()
    points = polyline(stroke_format.points(flat), tolerance)
    use_kernel = _use_cpu_kernel(flat.device)
    spec = _spec(height, width, sigma2, kernel, composite, compute_dtype, flat.device)
    spec = spec._replace(colour=stroke_format.colour)
    out = _Raster.apply(points.contiguous(), style.contiguous(), spec, invert, use_kernel)
    channels = (3,) if stroke_format.colour else ()
    return out.reshape(*batch_shape, *channels, height, width).to(strokes.dtype)


def check_colour_composite(stroke_format: StrokeFormat, composite: str) -> None:
    """Refuse the smooth max for coloured strokes, which are composited `over`."""
    if stroke_format.colour and composite == "max":
        raise ValueError("coloured strokes are composited with 'over'; choose composite='over'")


def to_rgb(sketch: Tensor) -> Tensor:
    """Repeat a greyscale sketch `[..., H, W]` to `[..., 3, H, W]` for an RGB backbone (a view)."""
    if not isinstance(sketch, Tensor):
        raise TypeError(f"sketch must be a torch.Tensor, got {type(sketch).__name__}")
    if sketch.ndim < 2:
        raise ValueError(f"sketch must have shape [..., H, W], got {tuple(sketch.shape)}")
    return sketch.unsqueeze(-3).expand(*sketch.shape[:-2], 3, *sketch.shape[-2:])


# --------------------------------------------------------------------------- input checks


def _check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(f"image_size must be an int or a pair of ints (H, W), got {image_size!r}")
    if min(size) < 2:
        raise ValueError(f"image_size must be at least 2 pixels on each side, got {size}")
    return size


def _check_strokes(strokes: Tensor, stroke_format: StrokeFormat) -> None:
    stroke_format.check(strokes)
    points = stroke_format.points(strokes.detach())
    largest = float(points.abs().amax()) if points.numel() else 0.0
    if largest > _MAX_COORDINATE:
        raise ValueError(
            f"stroke coordinates must lie within ±{_MAX_COORDINATE:g} (the canvas is [-1, 1]), "
            f"got {largest:g}"
        )


def _check_sigma2(sigma2: float) -> float:
    if not isinstance(sigma2, numbers.Real) or isinstance(sigma2, bool):
        raise TypeError(f"sigma2 must be a real number, got {type(sigma2).__name__}")
    value = float(sigma2)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma2 must be a finite number > 0, got {sigma2}")
    return value


class _Spec(NamedTuple):
    """Everything both paths need besides the strokes."""

    px: Tensor  # pixel centres along x
    py: Tensor  # and along y
    sigma2: float
    cutoff_d2: float  # beyond it (times width²) a stroke's ink is below float precision
    kernel: str
    composite: str  # "softor" or "max" ("over" is soft-or: module docstring)
    inv_temperature: float
    colour: bool = False  # RGB ink composited over (then `composite` is unused)


def _spec(
    height: int,
    width: int,
    sigma2: float,
    kernel: str,
    composite: str,
    dtype: torch.dtype,
    device: torch.device,
) -> _Spec:
    """The pixel grid and constants of one call (greyscale; `_replace(colour=True)` for RGB)."""
    return _Spec(
        torch.linspace(-1, 1, width, dtype=dtype, device=device),
        torch.linspace(-1, 1, height, dtype=dtype, device=device),
        sigma2,
        _cutoff_d2(sigma2, kernel, dtype),
        kernel,
        "max" if composite == "max" else "softor",
        1.0 / MAX_TEMPERATURE,
    )


def _cutoff_d2(sigma2: float, kernel: str, dtype: torch.dtype) -> float:
    """Squared distance beyond which a stroke's ink is below a quarter of the dtype's epsilon.

    Beyond it `1 - r` rounds to 1, so skipping those pixels changes no value and drops gradient
    terms ~1e-7 (float32) of the largest; any sigma2 works (large ones simply cull nothing).
    """
    tiny = torch.finfo(dtype).eps / 4
    z = -math.log(tiny) if kernel == "exp" else math.log(2 / tiny - 1)  # r(z) = tiny
    return sigma2 * z


_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


def _use_cpu_kernel(device: torch.device) -> bool:
    """Whether to run the compiled CPU kernel (else the chunked dense PyTorch path); logs once.

    The environment variable SKETCHENV_RASTER chooses: "auto" (default) uses the kernel when it
    builds and passes its self-test, "torch" forces the PyTorch path, "kernel" requires the
    kernel on CPU (raising if it is unavailable).
    """
    choice = os.environ.get("SKETCHENV_RASTER", "auto")
    if choice not in ("auto", "torch", "kernel"):
        raise ValueError(f"SKETCHENV_RASTER must be auto, torch or kernel, got {choice!r}")
    if device.type != "cpu" or choice == "torch":
        _log_once(logging.INFO, f"rasterising on {device.type} with the chunked PyTorch path")
        return False
    library, note = _raster_cpu.load()
    failure = note if library is None else _kernel_self_test_failure()
    if failure is None:
        _log_once(logging.INFO, f"rasterising on cpu with the {note}")
        return True
    if choice == "kernel":
        raise RuntimeError(f"SKETCHENV_RASTER=kernel but {failure}")
    _log_once(logging.WARNING, f"{failure}; rasterising on cpu with the slower PyTorch path")
    return False


_self_test: list[str | None] = []


def _kernel_self_test_failure() -> str | None:
    """Compare the compiled kernel with the PyTorch path once per process; None if they agree."""
    if not _self_test:
        # The caller may be inside no_grad or inference_mode; the comparison needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            _self_test.append(_compare_kernel_with_torch())
    return _self_test[0]


def _self_test_strokes(generator: torch.Generator, dtype: torch.dtype) -> list[tuple]:
    """(points, style, colour) cases: lines with a dot, and cubic polylines with random width,
    opacity and colour, greyscale and RGB."""
    lines = torch.rand(3, 5, 2, 2, generator=generator, dtype=dtype) * 2.4 - 1.2
    lines[0, 1, 1] = lines[0, 1, 0]  # a dot
    plain = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=dtype).expand(3, 5, 5)
    controls = torch.rand(3, 4, 4, 2, generator=generator, dtype=dtype) * 2.4 - 1.2
    curves = polyline(controls, torch.full((3, 4), 0.02, dtype=dtype))
    style = torch.rand(3, 4, 5, generator=generator, dtype=dtype)
    style[..., 0] = 0.5 + 1.5 * style[..., 0]
    return [(lines, plain, False), (curves, style, False), (curves, style, True)]


def _compare_kernel_with_torch() -> str | None:
    generator = torch.Generator().manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        cases = _self_test_strokes(generator, dtype)
        for (points, style, colour), kernel, composite in itertools.product(
            cases, KERNELS, ("softor", "max")
        ):
            if colour and composite == "max":
                continue
            spec = _spec(9, 11, 0.02, kernel, composite, dtype, points.device)
            spec = spec._replace(colour=colour)
            weights = torch.rand(3, *((3,) if colour else ()), 9, 11, generator=generator)
            kernel_run, torch_run = (
                _render_with_grad(points, style, spec, weights.to(dtype), use_kernel)
                for use_kernel in (True, False)
            )
            for got, want in zip(kernel_run, torch_run, strict=True):
                scale = tolerance * float(want.detach().abs().max())
                if not torch.allclose(got, want, rtol=tolerance, atol=max(scale, tolerance)):
                    what = "colour" if colour else composite
                    return (
                        f"compiled CPU kernel disagrees with PyTorch ({kernel}, {what}, "
                        f"{points.shape[-2] - 1} chords, {dtype})"
                    )
    return None


def _render_with_grad(points: Tensor, style: Tensor, spec: _Spec, weights: Tensor, kernel: bool):
    """(sketch, gradient wrt points, gradient wrt style) of one path."""
    leaves = points.clone().requires_grad_(), style.clone().requires_grad_()
    out = _Raster.apply(*leaves, spec, True, kernel)
    return (out, *torch.autograd.grad((out * weights).sum(), leaves))


# --------------------------------------------------------------------------- dense chunked path


def _stroke_geometry(points: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, ...]:
    """Per (sketch, stroke, chord, pixel) of polylines `[b, s, P, 2]`: t, the offset
    e = p - closest point, and d² = |e|².

    e = (perpendicular part, exact via the cross product) + (overshoot past an end) + (u for a
    dot), the same branch-free form as the compiled kernel. Inside the chord t_raw - t is
    exactly 0, so e has no along-chord rounding residue (u - t d would, and that residue biases
    gradients summed over many pixels).
    """
    x0, y0 = (c[..., None, None] for c in points[..., :-1, :].unbind(-1))
    x1, y1 = (c[..., None, None] for c in points[..., 1:, :].unbind(-1))
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    # Shorter than ~1e-19 is a dot (1 / length2 stays finite); a dot takes t = 1/2, so both
    # ends share its gradient.
    is_dot = length2 <= torch.finfo(points.dtype).tiny
    dot = is_dot.to(points.dtype)
    inv_length2 = torch.where(is_dot, 0.0, 1 / length2)
    ux, uy = px - x0, py - y0
    t_raw = (ux * dx + uy * dy) * inv_length2
    t = torch.clamp(t_raw, 0.5 * dot, 1 - 0.5 * dot)
    k = (ux * dy - uy * dx) * inv_length2
    past = t_raw - t
    ex = k * dy + past * dx + dot * ux
    ey = past * dy - k * dx + dot * uy
    return t, ex, ey, ex * ex + ey * ey


def _closest_chord(points: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, ...]:
    """`_stroke_geometry` at each pixel's closest chord (the first of equals), and its index:
    (t, ex, ey, d², chord), each `[b, s, H, W]`."""
    t, ex, ey, d2 = _stroke_geometry(points, px, py)
    if d2.shape[2] == 1:
        return t[:, :, 0], ex[:, :, 0], ey[:, :, 0], d2[:, :, 0], torch.zeros_like(d2[:, :, 0])
    d2, chord = d2.min(dim=2)
    t, ex, ey = (v.gather(2, chord[:, :, None]).squeeze(2) for v in (t, ex, ey))
    return t, ex, ey, d2, chord.to(points.dtype)


def _ink(d2: Tensor, style: Tensor, sigma2: float, kernel: str) -> tuple[Tensor, Tensor, Tensor]:
    """(ink r = opacity · k(z), k(z), z) for `[b, s, H, W]` squared distances."""
    width, opacity = (style[:, :, i, None, None] for i in (0, 1))
    z = d2 / (-sigma2 * (width * width))  # the negated z of the module docstring
    k = torch.exp(z) if kernel == "exp" else 2 * torch.sigmoid(z)
    return opacity * k, k, z


def _ink_gradients(
    grad_r: Tensor, geometry: tuple[Tensor, ...], style: Tensor, spec: _Spec, n_points: int
) -> tuple[Tensor, Tensor]:
    """Chain d loss / d r `[b, s, H, W]` to the polyline points `[b, s, P, 2]` and the style's
    width and opacity `[b, s, 2]`."""
    t, ex, ey, d2, chord = geometry
    _, k, z = _ink(d2, style, spec.sigma2, spec.kernel)
    width, opacity = (style[:, :, i, None, None] for i in (0, 1))
    dk = k if spec.kernel == "exp" else k * (1 - 0.5 * k)  # dk / d(-z)
    dr = grad_r * opacity * dk
    # d r / d c = r'(-z) (1/(σ² w²)) (-2 e)... for the closest point c = a + t (b - a), e = p - c
    g_c = dr * (2.0 / (spec.sigma2 * width * width))
    gx, gy = g_c * ex, g_c * ey
    # c = (1 - t) a + t b; sum each end separately (Σ g - Σ g t would cancel badly).
    ends = [torch.stack([(gc * w).sum((-2, -1)) for gc in (gx, gy)], dim=-1) for w in (1 - t, t)]
    if n_points == 2:
        grad_points = torch.stack(ends, dim=-2)
    else:
        onehot = torch.stack([chord == j for j in range(n_points - 1)], dim=2).to(t.dtype)
        ends = [
            torch.stack([(onehot * (gc * w)[:, :, None]).sum((-2, -1)) for gc in (gx, gy)], -1)
            for w in (1 - t, t)
        ]
        grad_points = torch.zeros(*t.shape[:2], n_points, 2, dtype=t.dtype, device=t.device)
        grad_points[:, :, :-1] += ends[0]
        grad_points[:, :, 1:] += ends[1]
    grad_width = (dr * (-2 * z) / width).sum((-2, -1))  # z = -d²/(σ² w²): dz/dw = -2 z / w
    grad_opacity = (grad_r * k).sum((-2, -1))
    return grad_points, torch.stack([grad_width, grad_opacity], dim=-1)


def _chunks(n_sketches: int, n_strokes: int, n_pixels: int, device: torch.device):
    """Yield (sketch slice, stroke slice) blocks of at most _CHUNK_ELEMENTS elements (each
    element one (sketch, stroke, chord, pixel); pass n_pixels × chords)."""
    per_stroke = max(1, _CHUNK_ELEMENTS.get(device.type, 1 << 22) // max(1, n_pixels))
    stroke_step = min(max(1, n_strokes), per_stroke)
    sketch_step = max(1, per_stroke // stroke_step)
    for b in range(0, n_sketches, sketch_step):
        for s in range(0, n_strokes, stroke_step):
            yield slice(b, b + sketch_step), slice(s, s + stroke_step)


def _work(points: Tensor, spec: _Spec) -> int:
    """Elements per stroke for `_chunks`: pixels × chords."""
    return spec.px.numel() * spec.py.numel() * (points.shape[2] - 1)


def _dense_forward(
    points: Tensor, style: Tensor, spec: _Spec, invert: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Sketch and per-pixel aggregates (see _Raster), in chunks of bounded size."""
    if spec.colour:
        return _dense_colour_forward(points, style, spec, invert)
    px, py = spec.px, spec.py[:, None]
    n_sketches, n_strokes = points.shape[:2]
    shape = (n_sketches, py.numel(), px.numel())
    # soft-or: A = product of the non-zero (1 - r), B = number of zero factors;
    # max: A = Σ exp(r / T), B = Σ r exp(r / T), then the ink B / A.
    acc_a = points.new_full(shape, 1.0 if spec.composite == "softor" else float(n_strokes))
    acc_b = points.new_zeros(shape)
    for sk, st in _chunks(n_sketches, n_strokes, _work(points, spec), points.device):
        d2 = _closest_chord(points[sk, st], px, py)[3]
        r = _ink(d2, style[sk, st], spec.sigma2, spec.kernel)[0]
        if spec.composite == "softor":
            factor = 1 - r
            zero = factor == 0
            acc_a[sk] *= torch.where(zero, 1.0, factor).prod(dim=1)
            acc_b[sk] += zero.sum(dim=1)
        else:
            e = torch.exp(r * spec.inv_temperature)
            acc_a[sk] += (e - 1).sum(dim=1)
            acc_b[sk] += (e * r).sum(dim=1)
    if spec.composite == "softor":
        paper = torch.where(acc_b > 0, 0.0, acc_a)
        return (paper if invert else 1 - paper), acc_a, acc_b
    acc_b = acc_b / acc_a
    return (1 - acc_b if invert else acc_b), acc_a, acc_b


def _dense_backward(
    points: Tensor,
    style: Tensor,
    spec: _Spec,
    invert: bool,
    grad_ink: Tensor,
    acc_a: Tensor,
    acc_b: Tensor,
) -> tuple[Tensor, Tensor]:
    """Gradients wrt points and style, recomputing each chunk from the per-pixel aggregates."""
    if spec.colour:
        return _dense_colour_backward(points, style, spec, invert, grad_ink, acc_a, acc_b)
    px, py = spec.px, spec.py[:, None]
    grad_points, grad_style = torch.zeros_like(points), torch.zeros_like(style)
    for sk, st in _chunks(*points.shape[:2], _work(points, spec), points.device):
        geometry = _closest_chord(points[sk, st], px, py)
        r = _ink(geometry[3], style[sk, st], spec.sigma2, spec.kernel)[0]
        g = grad_ink[sk, None]
        if spec.composite == "softor":
            # d I / d r_i = product of the other factors, exact where a factor is 0.
            factor = 1 - r
            prod_nz, zeros = acc_a[sk, None], acc_b[sk, None]
            others = torch.where(
                zeros == 0,
                prod_nz / torch.where(factor == 0, 1.0, factor),
                torch.where((zeros == 1) & (factor == 0), prod_nz, 0.0),
            )
            grad_r = g * others
        else:  # d/dr_i of Σ_j softmax(r / T)_j r_j
            norm, ink = acc_a[sk, None], acc_b[sk, None]
            e = torch.exp(r * spec.inv_temperature)
            grad_r = g * (e / norm) * (1 + (r - ink) * spec.inv_temperature)
        grad_points[sk, st], grad_style[sk, st, :2] = _ink_gradients(
            grad_r, geometry, style[sk, st], spec, points.shape[2]
        )
    return grad_points, grad_style


def _dense_colour_forward(
    points: Tensor, style: Tensor, spec: _Spec, invert: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """RGB over-composite `[B, 3, H, W]` stroke by stroke, and the transmittance aggregates
    (product of the non-zero 1 - r, number of zero factors) for backward."""
    px, py = spec.px, spec.py[:, None]
    n_sketches, n_strokes = points.shape[:2]
    canvas = points.new_full((n_sketches, 3, py.numel(), px.numel()), float(invert))
    acc_a = points.new_ones(n_sketches, py.numel(), px.numel())
    acc_b = torch.zeros_like(acc_a)
    for sk, _ in _chunks(n_sketches, 1, _work(points, spec) * n_strokes, points.device):
        for i in range(n_strokes):
            st = slice(i, i + 1)
            d2 = _closest_chord(points[sk, st], px, py)[3]
            r = _ink(d2, style[sk, st], spec.sigma2, spec.kernel)[0]  # [b, 1, H, W]
            canvas[sk] = canvas[sk] * (1 - r) + r * style[sk, i, 2:, None, None]
            factor = (1 - r)[:, 0]
            acc_a[sk] *= torch.where(factor == 0, 1.0, factor)
            acc_b[sk] += factor == 0
    return canvas, acc_a, acc_b


def _dense_colour_backward(
    points: Tensor,
    style: Tensor,
    spec: _Spec,
    invert: bool,
    grad_out: Tensor,
    acc_a: Tensor,
    acc_b: Tensor,
) -> tuple[Tensor, Tensor]:
    """Gradients of the RGB over-composite, replaying the strokes in order: with C_{i-1} the
    canvas below stroke i and S_i the transmittance above it, dC/dr_i = S_i (c_i - C_{i-1})
    and dC/dc_i = r_i S_i."""
    px, py = spec.px, spec.py[:, None]
    n_sketches, n_strokes = points.shape[:2]
    grad_points, grad_style = torch.zeros_like(points), torch.zeros_like(style)
    for sk, _ in _chunks(n_sketches, 1, _work(points, spec) * n_strokes, points.device):
        g = grad_out[sk]
        below = torch.full_like(g, float(invert))  # the canvas before the first stroke
        prefix, zeros = torch.ones_like(acc_a[sk]), torch.zeros_like(acc_a[sk])
        for i in range(n_strokes):
            st = slice(i, i + 1)
            geometry = _closest_chord(points[sk, st], px, py)
            r = _ink(geometry[3], style[sk, st], spec.sigma2, spec.kernel)[0]
            factor = (1 - r)[:, 0]
            prefix = prefix * torch.where(factor == 0, 1.0, factor)
            zeros = zeros + (factor == 0)
            above = torch.where(
                (acc_b[sk] == zeros) & (prefix > 0), acc_a[sk] / prefix.clamp_min(1e-300), 0.0
            )  # S_i
            colour = style[sk, i, 2:, None, None]
            grad_r = (g * (colour - below)).sum(1, keepdim=True) * above[:, None]
            grad_style[sk, i, 2:] = (g * (r * above[:, None])).sum((-2, -1))
            grad_points[sk, st], grad_style[sk, st, :2] = _ink_gradients(
                grad_r, geometry, style[sk, st], spec, points.shape[2]
            )
            below = below * (1 - r) + r * colour
    return grad_points, grad_style


class _Raster(torch.autograd.Function):
    """Polylines [B, n, P, 2] and styles [B, n, 5] -> sketches [B, (3,) H, W] without keeping
    per-(stroke, pixel) tensors.

    Forward keeps two per-pixel aggregates. Soft-or (and colour): the product of the non-zero
    factors (1 - r_i) and the count of zero factors, so the product of the *other* factors
    needed by the gradient is exact even where r_i = 1 (no 0/0). Smooth-max: the softmax
    normaliser and the ink. Backward recomputes each stroke's ink from the strokes and these
    aggregates.
    """

    @staticmethod
    def forward(
        ctx, points: Tensor, style: Tensor, spec: _Spec, invert: bool, use_kernel: bool
    ) -> Tensor:
        if use_kernel:
            library, _ = _raster_cpu.load()
            out, acc_a, acc_b = _raster_cpu.forward(library, points, style, spec, invert)
        else:
            out, acc_a, acc_b = _dense_forward(points, style, spec, invert)
        ctx.save_for_backward(points, style, acc_a, acc_b)
        ctx.spec, ctx.invert, ctx.use_kernel = spec, invert, use_kernel
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if torch.is_grad_enabled():  # backward(create_graph=True): its result must not lie
            raise RuntimeError(
                "render_strokes has first-order gradients only; double backward "
                "(create_graph=True, e.g. gradient penalties) is not supported"
            )
        points, style, acc_a, acc_b = ctx.saved_tensors
        # Greyscale aggregates describe the ink I; the sketch is 1 - I when inverted.
        flip = ctx.invert and not ctx.spec.colour
        grad_ink = (-grad_out if flip else grad_out).contiguous()
        if ctx.use_kernel:
            library, _ = _raster_cpu.load()
            grads = _raster_cpu.backward(
                library, points, style, ctx.spec, ctx.invert, grad_ink, acc_a, acc_b
            )
        else:
            grads = _dense_backward(points, style, ctx.spec, ctx.invert, grad_ink, acc_a, acc_b)
        return *grads, None, None, None
