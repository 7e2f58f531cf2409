"""Differentiable stroke rasteriser: straight strokes in canvas coordinates -> greyscale sketch.

Conventions (see docs/architecture.md): a stroke is `(x0, y0, x1, y1)` in `[-1, 1]`; `x` runs
along columns (left -1 to right +1), `y` along rows (top -1 to bottom +1); pixel centres sit on
`linspace(-1, 1, W)` along x and `linspace(-1, 1, H)` along y.

Maths (SPEC §2): for pixel `p` and stroke `a -> b`, `t = clamp((p-a)·(b-a) / |b-a|², 0, 1)`,
`d² = |p - a - t (b-a)|²` (a zero-length stroke is a dot), per-stroke ink `r = exp(-d²/σ²)`
("exp") or `2 sigmoid(-d²/σ²)` ("sigmoid"), strokes composited per pixel:

- "softor": `I = 1 - Π_i (1 - r_i)` (the paper's choice).
- "over": painter's alpha-over in stroke order, `I_k = r_k + (1 - r_k) I_{k-1}`, `I_0 = 0`,
  with ink colour 1 and alpha `r_k` (the paper code's `over`). For single-colour ink this *is*
  soft-or (`1 - I_k = (1 - r_k)(1 - I_{k-1})`), so it shares soft-or's kernel; the tests check
  the identity against the literal recursion.
- "max": smooth maximum `I = Σ_i w_i r_i` with `w = softmax(r / T)`, `T = MAX_TEMPERATURE`
  (0.05): it stays in `[0, max_i r_i]`, tends to the hard max as `T -> 0`, and passes gradient
  to every stroke that overlaps a pixel (the paper code's `smoothmax`, whose default T = 1 is
  far from a max for 20 strokes).

`invert=True` returns `1 - I`: black strokes on white, as in the paper.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from sketchenv._raster_reference import MAX_TEMPERATURE

__all__ = ["COMPOSITES", "KERNELS", "MAX_TEMPERATURE", "render_strokes", "to_rgb"]

KERNELS = ("exp", "sigmoid")
COMPOSITES = ("softor", "over", "max")

logger = logging.getLogger("sketchenv.raster")

# Dense fallback path: at most this many (sketch, stroke, pixel) elements per chunk.
_CHUNK_ELEMENTS = 1 << 22


def render_strokes(
    strokes: Tensor,
    image_size: int | Sequence[int],
    *,
    sigma2: float = 5e-4,
    kernel: str = "exp",
    composite: str = "softor",
    invert: bool = True,
) -> Tensor:
    """Rasterise strokes `[..., n_strokes, 4]` into greyscale sketches `[..., H, W]` in [0, 1].

    Differentiable with respect to `strokes`; never keeps a sketches × strokes × pixels tensor.
    """
    height, width = _check_image_size(image_size)
    _check_strokes(strokes)
    sigma2 = _check_sigma2(sigma2)
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}; choose one of {COMPOSITES}")
    if not isinstance(invert, bool):
        raise TypeError(f"invert must be a bool, got {type(invert).__name__}")

    batch_shape, n_strokes = strokes.shape[:-2], strokes.shape[-2]
    compute_dtype = torch.float64 if strokes.dtype == torch.float64 else torch.float32
    flat = strokes.reshape(math.prod(batch_shape), n_strokes, 4).to(compute_dtype)
    params = (height, width, sigma2, kernel, "max" if composite == "max" else "softor", invert)
    _log_path_once(flat.device.type)
    out = _DenseChunkedRaster.apply(flat, params)
    return out.reshape(*batch_shape, height, width).to(strokes.dtype)


def to_rgb(sketch: Tensor) -> Tensor:
    """Repeat a greyscale sketch `[..., H, W]` to `[..., 3, H, W]` for an RGB backbone."""
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


def _check_strokes(strokes: Tensor) -> None:
    if not isinstance(strokes, Tensor):
        raise TypeError(
            f"strokes must be a torch.Tensor of shape [..., n_strokes, 4], "
            f"got {type(strokes).__name__}"
        )
    if not strokes.is_floating_point():
        raise TypeError(
            f"strokes must be a floating-point tensor, got dtype {strokes.dtype}; "
            "convert with strokes.float()"
        )
    if strokes.ndim < 2 or strokes.shape[-1] != 4:
        raise ValueError(
            f"strokes must have shape [..., n_strokes, 4] with (x0, y0, x1, y1) last, "
            f"got {tuple(strokes.shape)}"
        )
    if not bool(torch.isfinite(strokes).all()):
        raise ValueError("strokes contain NaN or infinite coordinates")


def _check_sigma2(sigma2: float) -> float:
    if not isinstance(sigma2, numbers.Real) or isinstance(sigma2, bool):
        raise TypeError(f"sigma2 must be a real number, got {type(sigma2).__name__}")
    value = float(sigma2)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma2 must be a finite number > 0, got {sigma2}")
    return value


_logged_paths: set[str] = set()


def _log_path_once(device_type: str) -> None:
    if device_type not in _logged_paths:
        _logged_paths.add(device_type)
        logger.info("rasterising on %s with the chunked dense PyTorch path", device_type)


# --------------------------------------------------------------------------- dense chunked path


def _stroke_geometry(strokes: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, ...]:
    """Per (sketch, stroke, pixel): t, the offset e = p - closest point, and d² = |e|².

    Where the closest point is inside the stroke, e is computed as the exact perpendicular
    (via the cross product), not as u - t d: the rounding error of t would otherwise leave a
    component of e along the stroke that biases gradients summed over many pixels.
    """
    x0, y0, x1, y1 = (c[..., None, None] for c in strokes.unbind(-1))
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    ux, uy = px - x0, py - y0
    nonzero = length2 > 0
    safe_length2 = torch.where(nonzero, length2, 1.0)
    t_raw = (ux * dx + uy * dy) / safe_length2
    interior = (t_raw > 0) & (t_raw < 1) & nonzero
    t = torch.where(nonzero, t_raw.clamp(0, 1), 0.5)
    k = (ux * dy - uy * dx) / safe_length2
    ex = torch.where(interior, k * dy, ux - t * dx)
    ey = torch.where(interior, -k * dx, uy - t * dy)
    return t, ex, ey, ex * ex + ey * ey


def _ink(d2: Tensor, sigma2: float, kernel: str) -> Tensor:
    z = d2 / -sigma2
    return torch.exp(z) if kernel == "exp" else 2 * torch.sigmoid(z)


def _chunks(n_sketches: int, n_strokes: int, n_pixels: int):
    """Yield (sketch slice, stroke slice) blocks of at most _CHUNK_ELEMENTS elements."""
    per_stroke = max(1, _CHUNK_ELEMENTS // max(1, n_pixels))
    stroke_step = min(max(1, n_strokes), per_stroke)
    sketch_step = max(1, per_stroke // stroke_step)
    for b in range(0, n_sketches, sketch_step):
        for s in range(0, n_strokes, stroke_step):
            yield slice(b, b + sketch_step), slice(s, s + stroke_step)


class _DenseChunkedRaster(torch.autograd.Function):
    """Dense maths in bounded chunks; backward recomputes each chunk from per-pixel aggregates.

    Saved per pixel: soft-or keeps the product of the non-zero factors (1 - r_i) and the count of
    exactly-zero factors, so the product of the *other* factors is exact even where r_i = 1;
    smooth-max keeps the softmax normaliser and the composited ink.
    """

    @staticmethod
    def forward(ctx, strokes: Tensor, params: tuple) -> Tensor:
        height, width, sigma2, kernel, composite, invert = params
        n_sketches, n_strokes, _ = strokes.shape
        px = torch.linspace(-1, 1, width, dtype=strokes.dtype, device=strokes.device)
        py = torch.linspace(-1, 1, height, dtype=strokes.dtype, device=strokes.device)[:, None]
        shape = (n_sketches, height, width)
        if composite == "softor":
            acc_a = strokes.new_ones(shape)  # product of non-zero (1 - r)
            acc_b = strokes.new_zeros(shape)  # number of zero factors
        else:
            acc_a = strokes.new_full(shape, float(n_strokes))  # Σ exp(r / T); culled r = 0
            acc_b = strokes.new_zeros(shape)  # Σ r exp(r / T)
        for sk, st in _chunks(n_sketches, n_strokes, height * width):
            r = _ink(_stroke_geometry(strokes[sk, st], px, py)[3], sigma2, kernel)
            if composite == "softor":
                factor = 1 - r
                zero = factor == 0
                acc_a[sk] *= torch.where(zero, 1.0, factor).prod(dim=1)
                acc_b[sk] += zero.sum(dim=1)
            else:
                e = torch.exp(r / MAX_TEMPERATURE)
                acc_a[sk] += (e - 1).sum(dim=1)
                acc_b[sk] += (e * r).sum(dim=1)
        if composite == "softor":
            ink = 1 - torch.where(acc_b > 0, 0.0, acc_a)
        else:
            ink = acc_b / acc_a
            acc_b = ink
        ctx.save_for_backward(strokes, acc_a, acc_b)
        ctx.params = params
        return 1 - ink if invert else ink

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        strokes, acc_a, acc_b = ctx.saved_tensors
        height, width, sigma2, kernel, composite, invert = ctx.params
        px = torch.linspace(-1, 1, width, dtype=strokes.dtype, device=strokes.device)
        py = torch.linspace(-1, 1, height, dtype=strokes.dtype, device=strokes.device)[:, None]
        grad_ink = -grad_out if invert else grad_out
        grad = torch.zeros_like(strokes)
        for sk, st in _chunks(*strokes.shape[:2], height * width):
            t, ex, ey, d2 = _stroke_geometry(strokes[sk, st], px, py)
            r = _ink(d2, sigma2, kernel)
            g = grad_ink[sk, None]
            if composite == "softor":
                # d I / d r_i = product of the other factors, exact where a factor is 0.
                factor = 1 - r
                prod_nz, zeros = acc_a[sk, None], acc_b[sk, None]
                others = torch.where(
                    zeros == 0,
                    prod_nz / torch.where(factor == 0, 1.0, factor),
                    torch.where((zeros == 1) & (factor == 0), prod_nz, 0.0),
                )
                g_r = g * others
            else:
                norm, ink = acc_a[sk, None], acc_b[sk, None]
                e = torch.exp(r / MAX_TEMPERATURE)
                g_r = g * (e / norm) * (1 + (r - ink) / MAX_TEMPERATURE)
            dr_dz = r if kernel == "exp" else r * (1 - 0.5 * r)  # r = k(z), z = -d²/σ²
            # d r / d c = r'(z) (-1/σ²) (-2 e) for the closest point c = a + t (b - a), e = p - c
            g_c = g_r * dr_dz * (2.0 / sigma2)
            gx, gy = g_c * ex, g_c * ey
            # c = (1 - t) a + t b; sum each end separately (Σ g - Σ g t would cancel badly).
            grad[sk, st] = torch.stack(
                [(g * w).sum((-2, -1)) for w in (1 - t, t) for g in (gx, gy)], dim=-1
            )
        return grad, None
