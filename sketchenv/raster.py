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

Speed and memory: a custom autograd Function keeps only per-pixel aggregates and recomputes each
stroke's ink in backward. On CPU a small C++ kernel (`_raster_cpu`, compiled on first use and
cached) visits only the pixels within the distance where a stroke's ink drops below a quarter of
the float epsilon (~4.2 σ in float32, so 1 - r rounds to 1 beyond it: values are unchanged and
the dropped gradient terms are ~1e-7 of the largest). Elsewhere (no compiler, GPU) a chunked
dense PyTorch path computes the same maths, in float32 for half-precision inputs. One log line
on logger "sketchenv.raster" says which path runs; SKETCHENV_RASTER=auto|torch|kernel chooses.
Gradients are first order only (double backward raises).
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from sketchenv import _raster_cpu
from sketchenv._raster_reference import MAX_TEMPERATURE

__all__ = ["COMPOSITES", "KERNELS", "MAX_TEMPERATURE", "render_strokes", "to_rgb"]

KERNELS = ("exp", "sigmoid")
COMPOSITES = ("softor", "over", "max")

logger = logging.getLogger("sketchenv.raster")

# Dense PyTorch path: at most this many (sketch, stroke, pixel) elements per chunk (about 25
# temporaries of this size are alive at once).
_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 22}
# Largest |coordinate| accepted: far beyond the canvas, yet far from float overflow in d².
_MAX_COORDINATE = 1e6


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

    Differentiable (once) with respect to `strokes`; never keeps a sketches × strokes × pixels
    tensor. On CPU a C++ kernel, compiled on first use and cached, does the work when a compiler
    is present; otherwise, and on GPU, a chunked PyTorch path (see `_use_cpu_kernel`).
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
    # Half precision (GPU) is computed in float32; float64 stays float64 (gradcheck).
    compute_dtype = torch.float64 if strokes.dtype == torch.float64 else torch.float32
    flat = strokes.reshape(math.prod(batch_shape), n_strokes, 4).to(compute_dtype)
    use_kernel = _use_cpu_kernel(flat.device)
    spec = _spec(height, width, sigma2, kernel, composite, compute_dtype, flat.device)
    out = _Raster.apply(flat.contiguous(), spec, invert, use_kernel)
    return out.reshape(*batch_shape, height, width).to(strokes.dtype)


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


def _check_strokes(strokes: Tensor) -> None:
    if not isinstance(strokes, Tensor):
        raise TypeError(
            f"strokes must be a torch.Tensor of shape [..., n_strokes, 4], "
            f"got {type(strokes).__name__}"
        )
    if strokes.device.type == "meta":
        raise ValueError(
            "strokes are on the meta device, which holds no values: make them on cpu or cuda"
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
    largest = float(strokes.detach().abs().amax()) if strokes.numel() else 0.0
    if not math.isfinite(largest):
        raise ValueError("strokes contain NaN or infinite coordinates")
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


def _spec(
    height: int,
    width: int,
    sigma2: float,
    kernel: str,
    composite: str,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple:
    """Everything both paths need besides the strokes: (px, py, σ², cutoff d², kernel,
    composite, 1 / temperature)."""
    return (
        torch.linspace(-1, 1, width, dtype=dtype, device=device),
        torch.linspace(-1, 1, height, dtype=dtype, device=device),
        sigma2,
        _cutoff_d2(sigma2, kernel, dtype),
        kernel,
        "max" if composite == "max" else "softor",  # "over" is soft-or (module docstring)
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


def _compare_kernel_with_torch() -> str | None:
    generator = torch.Generator().manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        strokes = torch.rand(3, 5, 4, generator=generator, dtype=dtype) * 2.4 - 1.2
        strokes[0, 1, 2:] = strokes[0, 1, :2]  # a dot
        weights = torch.rand(3, 9, 11, generator=generator, dtype=dtype)
        for kernel, composite in itertools.product(KERNELS, ("softor", "max")):
            spec = _spec(9, 11, 0.02, kernel, composite, dtype, strokes.device)
            (out_k, grad_k), (out_t, grad_t) = (
                _render_with_grad(strokes, spec, weights, use_kernel)
                for use_kernel in (True, False)
            )
            grad_tolerance = tolerance * float(grad_t.abs().max())
            if not (
                torch.allclose(out_k, out_t, rtol=tolerance, atol=tolerance)
                and torch.allclose(grad_k, grad_t, rtol=tolerance, atol=grad_tolerance)
            ):
                return (
                    f"compiled CPU kernel disagrees with PyTorch ({kernel}, {composite}, {dtype})"
                )
    return None


def _render_with_grad(strokes: Tensor, spec: tuple, weights: Tensor, use_kernel: bool):
    leaf = strokes.clone().requires_grad_()
    out = _Raster.apply(leaf, spec, True, use_kernel)
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    return out, grad


# --------------------------------------------------------------------------- dense chunked path


def _stroke_geometry(strokes: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, ...]:
    """Per (sketch, stroke, pixel): t, the offset e = p - closest point, and d² = |e|².

    e = (perpendicular part, exact via the cross product) + (overshoot past an end) + (u for a
    dot), the same branch-free form as the compiled kernel. Inside the stroke t_raw - t is
    exactly 0, so e has no along-stroke rounding residue (u - t d would, and that residue biases
    gradients summed over many pixels).
    """
    x0, y0, x1, y1 = (c[..., None, None] for c in strokes.unbind(-1))
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    # Shorter than ~1e-19 is a dot (1 / length2 stays finite); a dot takes t = 1/2, so both
    # ends share its gradient.
    is_dot = length2 <= torch.finfo(strokes.dtype).tiny
    dot = is_dot.to(strokes.dtype)
    inv_length2 = torch.where(is_dot, 0.0, 1 / length2)
    ux, uy = px - x0, py - y0
    t_raw = (ux * dx + uy * dy) * inv_length2
    t = torch.clamp(t_raw, 0.5 * dot, 1 - 0.5 * dot)
    k = (ux * dy - uy * dx) * inv_length2
    past = t_raw - t
    ex = k * dy + past * dx + dot * ux
    ey = past * dy - k * dx + dot * uy
    return t, ex, ey, ex * ex + ey * ey


def _ink(d2: Tensor, sigma2: float, kernel: str) -> Tensor:
    z = d2 / -sigma2
    return torch.exp(z) if kernel == "exp" else 2 * torch.sigmoid(z)


def _chunks(n_sketches: int, n_strokes: int, n_pixels: int, device: torch.device):
    """Yield (sketch slice, stroke slice) blocks of at most _CHUNK_ELEMENTS elements."""
    per_stroke = max(1, _CHUNK_ELEMENTS.get(device.type, 1 << 22) // max(1, n_pixels))
    stroke_step = min(max(1, n_strokes), per_stroke)
    sketch_step = max(1, per_stroke // stroke_step)
    for b in range(0, n_sketches, sketch_step):
        for s in range(0, n_strokes, stroke_step):
            yield slice(b, b + sketch_step), slice(s, s + stroke_step)


def _dense_forward(strokes: Tensor, spec: tuple, invert: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Sketch and per-pixel aggregates (see _Raster), in chunks of bounded size."""
    px, py, sigma2, _, kernel, composite, inv_temperature = spec
    n_sketches, n_strokes, _ = strokes.shape
    shape = (n_sketches, py.numel(), px.numel())
    # soft-or: A = product of the non-zero (1 - r), B = number of zero factors;
    # max: A = Σ exp(r / T), B = Σ r exp(r / T), then the ink B / A.
    acc_a = strokes.new_full(shape, 1.0 if composite == "softor" else float(n_strokes))
    acc_b = strokes.new_zeros(shape)
    for sk, st in _chunks(n_sketches, n_strokes, px.numel() * py.numel(), strokes.device):
        r = _ink(_stroke_geometry(strokes[sk, st], px, py[:, None])[3], sigma2, kernel)
        if composite == "softor":
            factor = 1 - r
            zero = factor == 0
            acc_a[sk] *= torch.where(zero, 1.0, factor).prod(dim=1)
            acc_b[sk] += zero.sum(dim=1)
        else:
            e = torch.exp(r * inv_temperature)
            acc_a[sk] += (e - 1).sum(dim=1)
            acc_b[sk] += (e * r).sum(dim=1)
    if composite == "softor":
        paper = torch.where(acc_b > 0, 0.0, acc_a)
        return (paper if invert else 1 - paper), acc_a, acc_b
    acc_b = acc_b / acc_a
    return (1 - acc_b if invert else acc_b), acc_a, acc_b


def _dense_backward(
    strokes: Tensor, spec: tuple, grad_ink: Tensor, acc_a: Tensor, acc_b: Tensor
) -> Tensor:
    """Gradient wrt strokes, recomputing each chunk from the per-pixel aggregates."""
    px, py, sigma2, _, kernel, composite, inv_temperature = spec
    grad = torch.zeros_like(strokes)
    for sk, st in _chunks(*strokes.shape[:2], px.numel() * py.numel(), strokes.device):
        t, ex, ey, d2 = _stroke_geometry(strokes[sk, st], px, py[:, None])
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
            grad_r = g * others
        else:  # d/dr_i of Σ_j softmax(r / T)_j r_j
            norm, ink = acc_a[sk, None], acc_b[sk, None]
            e = torch.exp(r * inv_temperature)
            grad_r = g * (e / norm) * (1 + (r - ink) * inv_temperature)
        dr_dz = r if kernel == "exp" else r * (1 - 0.5 * r)  # r = k(z), z = -d²/σ²
        # d r / d c = r'(z) (-1/σ²) (-2 e) for the closest point c = a + t (b - a), e = p - c
        g_c = grad_r * dr_dz * (2.0 / sigma2)
        gx, gy = g_c * ex, g_c * ey
        # c = (1 - t) a + t b; sum each end separately (Σ g - Σ g t would cancel badly).
        grad[sk, st] = torch.stack(
            [(gc * w).sum((-2, -1)) for w in (1 - t, t) for gc in (gx, gy)], dim=-1
        )
    return grad


class _Raster(torch.autograd.Function):
    """Strokes [B, n, 4] -> sketches [B, H, W] without keeping per-(stroke, pixel) tensors.

    Forward keeps two per-pixel aggregates. Soft-or: the product of the non-zero factors
    (1 - r_i) and the count of zero factors, so the product of the *other* factors needed by
    the gradient is exact even where r_i = 1 (no 0/0). Smooth-max: the softmax normaliser and
    the ink. Backward recomputes each stroke's ink from the strokes and these aggregates.
    """

    @staticmethod
    def forward(ctx, strokes: Tensor, spec: tuple, invert: bool, use_kernel: bool) -> Tensor:
        if use_kernel:
            library, _ = _raster_cpu.load()
            out, acc_a, acc_b = _raster_cpu.forward(library, strokes, spec, invert)
        else:
            out, acc_a, acc_b = _dense_forward(strokes, spec, invert)
        ctx.save_for_backward(strokes, acc_a, acc_b)
        ctx.spec, ctx.invert, ctx.use_kernel = spec, invert, use_kernel
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if torch.is_grad_enabled():  # backward(create_graph=True): its result must not lie
            raise RuntimeError(
                "render_strokes has first-order gradients only; double backward "
                "(create_graph=True, e.g. gradient penalties) is not supported"
            )
        strokes, acc_a, acc_b = ctx.saved_tensors
        grad_ink = (-grad_out if ctx.invert else grad_out).contiguous()
        if ctx.use_kernel:
            library, _ = _raster_cpu.load()
            grad = _raster_cpu.backward(library, strokes, ctx.spec, grad_ink, acc_a, acc_b)
        else:
            grad = _dense_backward(strokes, ctx.spec, grad_ink, acc_a, acc_b)
        return grad, None, None, None
