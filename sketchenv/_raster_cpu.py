"""Compiled CPU kernel for sketchenv.raster: built on first use with the system C++ compiler.

The kernel walks every stroke over only the pixels where its ink can exceed the cut-off
(`cutoff_d2`, chosen by the caller so that the skipped ink is below float precision), within a
band around the segment, row by row. Forward keeps two per-pixel aggregates; backward recomputes
each stroke's pixels from them, so nothing of size sketches × strokes × pixels ever exists.

It is plain C++ with no Python or torch headers (builds in about a second) and is called through
ctypes, which releases the GIL, so sketches are split over a thread pool. If no compiler is
present or anything fails, `load()` returns None with the reason and the caller falls back.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

enum { KERNEL_EXP = 0, KERNEL_SIGMOID = 1 };
enum { COMPOSITE_SOFTOR = 0, COMPOSITE_MAX = 1 };

// exp(x) from arithmetic only (Cody-Waite reduction, degree-7 Taylor polynomial, exponent
// bits), so loops calling it vectorise and scalar and vector lanes give identical results.
// Relative error ~2e-7 for x in [-87, 88].
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666668e-2f +
                  r * (8.3333338e-3f + r * (1.3888889e-3f + r * 1.9841270e-4f))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline float exp_t(float x) { return exp_approx(x); }
inline double exp_t(double x) { return std::exp(x); }

template <typename T>
struct Stroke {
  T x0, y0, dx, dy, inv_length2, t_lo, t_hi, dot;
  explicit Stroke(const T* s) : x0(s[0]), y0(s[1]), dx(s[2] - s[0]), dy(s[3] - s[1]) {
    const T length2 = dx * dx + dy * dy;
    const bool is_dot = !(length2 > 0);
    inv_length2 = is_dot ? T(0) : T(1) / length2;
    t_lo = is_dot ? T(0.5) : T(0);  // a dot takes t = 1/2: its gradient is shared by both ends
    t_hi = is_dot ? T(0.5) : T(1);
    dot = is_dot ? T(1) : T(0);
  }
};

// Offset e = p - closest point, its parameter t, and the ink r at one pixel, without branches:
// e = (perpendicular part, exact via the cross product) + (overshoot past an end) + (u for a
// dot). Inside the segment t_raw - t is exactly 0, so e has no spurious along-stroke part.
template <typename T, int KERNEL>
inline void pixel(const Stroke<T>& s, T ux, T uy, T inv_sigma2, T& t, T& ex, T& ey, T& r) {
  const T t_raw = (ux * s.dx + uy * s.dy) * s.inv_length2;
  t = std::min(std::max(t_raw, s.t_lo), s.t_hi);
  const T k = (ux * s.dy - uy * s.dx) * s.inv_length2;
  const T past = t_raw - t;
  ex = k * s.dy + past * s.dx + s.dot * ux;
  ey = past * s.dy - k * s.dx + s.dot * uy;
  const T z = (ex * ex + ey * ey) * inv_sigma2;
  r = KERNEL == KERNEL_EXP ? exp_t(-z) : T(2) / (T(1) + exp_t(z));
}

// Rows and, per row, columns of the pixels within sqrt(cutoff_d2) of the segment: the segment's
// bounding box intersected with the band around its line, widened by a hundredth of a pixel.
struct Span {
  int64_t row0, row1;
};

template <typename T>
Span rows_of(const T* s, double radius, int64_t H) {
  const double scale = 0.5 * double(H - 1);
  const double lo = (std::min(s[1], s[3]) - radius + 1.0) * scale - 0.01;
  const double hi = (std::max(s[1], s[3]) + radius + 1.0) * scale + 0.01;
  return {std::max<int64_t>(0, int64_t(std::ceil(std::max(lo, -1.0)))),
          std::min<int64_t>(H - 1, int64_t(std::floor(std::min(hi, double(H)))))};
}

template <typename T>
bool columns_of(const T* s, double radius, double y, int64_t W, int64_t& c0, int64_t& c1) {
  const double x0 = s[0], y0 = s[1], dx = double(s[2]) - x0, dy = double(s[3]) - y0;
  double lo = std::min<double>(s[0], s[2]) - radius, hi = std::max<double>(s[0], s[2]) + radius;
  const double length = std::sqrt(dx * dx + dy * dy);
  const double uy = y - y0;
  if (dy != 0.0) {  // |cross(u, d)| <= radius * length
    const double a = (uy * dx - radius * length) / dy, b = (uy * dx + radius * length) / dy;
    lo = std::max(lo, x0 + std::min(a, b));
    hi = std::min(hi, x0 + std::max(a, b));
  } else if (dx != 0.0 && std::abs(uy) > radius) {
    return false;
  }
  const double scale = 0.5 * double(W - 1);
  lo = (lo + 1.0) * scale - 0.01;
  hi = (hi + 1.0) * scale + 0.01;
  if (!(hi >= 0.0 && lo <= double(W - 1)) || lo > hi) return false;
  c0 = std::max<int64_t>(0, int64_t(std::ceil(lo)));
  c1 = std::min<int64_t>(W - 1, int64_t(std::floor(hi)));
  return c0 <= c1;
}

template <typename T, int KERNEL, int COMPOSITE>
void forward(const T* strokes, int64_t b0, int64_t b1, int64_t n, const T* px, int64_t W,
             const T* py, int64_t H, double sigma2, double cutoff_d2, T inv_temperature,
             bool invert, T* out, T* acc_a, T* acc_b) {
  const T inv_sigma2 = T(1.0 / sigma2);
  const double radius = std::sqrt(cutoff_d2);
  const int64_t P = H * W;
  for (int64_t b = b0; b < b1; ++b) {
    T* A = acc_a + b * P;  // soft-or: product of non-zero (1 - r); max: sum of exp(r / T)
    T* B = acc_b + b * P;  // soft-or: count of zero factors;       max: sum of r exp(r / T)
    std::fill(A, A + P, COMPOSITE == COMPOSITE_SOFTOR ? T(1) : T(n));
    std::fill(B, B + P, T(0));
    for (int64_t i = 0; i < n; ++i) {
      const T* s = strokes + (b * n + i) * 4;
      const Stroke<T> stroke(s);
      const Span span = rows_of(s, radius, H);
      for (int64_t row = span.row0; row <= span.row1; ++row) {
        int64_t c0, c1;
        if (!columns_of(s, radius, double(py[row]), W, c0, c1)) continue;
        const T uy = py[row] - stroke.y0;
        T* a = A + row * W;
        T* z = B + row * W;
#pragma omp simd
        for (int64_t c = c0; c <= c1; ++c) {
          T t, ex, ey, r;
          pixel<T, KERNEL>(stroke, px[c] - stroke.x0, uy, inv_sigma2, t, ex, ey, r);
          if (COMPOSITE == COMPOSITE_SOFTOR) {
            const T f = T(1) - r;
            a[c] *= f == T(0) ? T(1) : f;
            z[c] += f == T(0) ? T(1) : T(0);
          } else {
            const T e = exp_t(r * inv_temperature);
            a[c] += e - T(1);
            z[c] += e * r;
          }
        }
      }
    }
    T* o = out + b * P;
    for (int64_t p = 0; p < P; ++p) {
      if (COMPOSITE == COMPOSITE_SOFTOR) {
        const T paper = B[p] > T(0) ? T(0) : A[p];
        o[p] = invert ? paper : T(1) - paper;
      } else {
        B[p] = B[p] / A[p];  // keep the ink for backward
        o[p] = invert ? T(1) - B[p] : B[p];
      }
    }
  }
}

template <typename T, int KERNEL, int COMPOSITE>
void backward(const T* strokes, int64_t b0, int64_t b1, int64_t n, const T* px, int64_t W,
              const T* py, int64_t H, double sigma2, double cutoff_d2, T inv_temperature,
              const T* grad_ink, const T* acc_a, const T* acc_b, T* grad) {
  const T inv_sigma2 = T(1.0 / sigma2);
  const T two_over_sigma2 = T(2.0 / sigma2);
  const double radius = std::sqrt(cutoff_d2);
  const int64_t P = H * W;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      const T* s = strokes + (b * n + i) * 4;
      const Stroke<T> stroke(s);
      const Span span = rows_of(s, radius, H);
      double ax = 0, ay = 0, bx = 0, by = 0;  // per-row partial sums are added in double
      for (int64_t row = span.row0; row <= span.row1; ++row) {
        int64_t c0, c1;
        if (!columns_of(s, radius, double(py[row]), W, c0, c1)) continue;
        const T uy = py[row] - stroke.y0;
        const T* g = grad_ink + b * P + row * W;
        const T* A = acc_a + b * P + row * W;
        const T* B = acc_b + b * P + row * W;
        T rax = 0, ray = 0, rbx = 0, rby = 0;
#pragma omp simd reduction(+ : rax, ray, rbx, rby)
        for (int64_t c = c0; c <= c1; ++c) {
          T t, ex, ey, r;
          pixel<T, KERNEL>(stroke, px[c] - stroke.x0, uy, inv_sigma2, t, ex, ey, r);
          T grad_r;
          if (COMPOSITE == COMPOSITE_SOFTOR) {  // product of the other factors, exact at 0
            const T f = T(1) - r;
            const T others = B[c] == T(0) ? A[c] / (f == T(0) ? T(1) : f)
                             : (B[c] == T(1) && f == T(0)) ? A[c] : T(0);
            grad_r = g[c] * others;
          } else {  // d/dr_i of sum_j softmax(r/T)_j r_j
            const T e = exp_t(r * inv_temperature);
            grad_r = g[c] * (e / A[c]) * (T(1) + (r - B[c]) * inv_temperature);
          }
          const T dr_dz = KERNEL == KERNEL_EXP ? r : r * (T(1) - T(0.5) * r);
          const T gc = grad_r * dr_dz * two_over_sigma2;
          const T gx = gc * ex, gy = gc * ey;
          rax += gx * (T(1) - t);
          ray += gy * (T(1) - t);
          rbx += gx * t;
          rby += gy * t;
        }
        ax += rax;
        ay += ray;
        bx += rbx;
        by += rby;
      }
      T* out = grad + (b * n + i) * 4;
      out[0] = T(ax);
      out[1] = T(ay);
      out[2] = T(bx);
      out[3] = T(by);
    }
  }
}

template <typename T>
void forward_any(int kernel, int composite, const T* strokes, int64_t b0, int64_t b1,
                 int64_t n, const T* px, int64_t W, const T* py, int64_t H, double sigma2,
                 double cutoff_d2, double inv_temperature, int invert, T* out, T* acc_a,
                 T* acc_b) {
  auto f = kernel == KERNEL_EXP
               ? (composite == COMPOSITE_SOFTOR ? forward<T, KERNEL_EXP, COMPOSITE_SOFTOR>
                                                : forward<T, KERNEL_EXP, COMPOSITE_MAX>)
               : (composite == COMPOSITE_SOFTOR ? forward<T, KERNEL_SIGMOID, COMPOSITE_SOFTOR>
                                                : forward<T, KERNEL_SIGMOID, COMPOSITE_MAX>);
  f(strokes, b0, b1, n, px, W, py, H, sigma2, cutoff_d2, T(inv_temperature), invert != 0, out,
    acc_a, acc_b);
}

template <typename T>
void backward_any(int kernel, int composite, const T* strokes, int64_t b0, int64_t b1,
                  int64_t n, const T* px, int64_t W, const T* py, int64_t H, double sigma2,
                  double cutoff_d2, double inv_temperature, const T* grad_ink, const T* acc_a,
                  const T* acc_b, T* grad) {
  auto f = kernel == KERNEL_EXP
               ? (composite == COMPOSITE_SOFTOR ? backward<T, KERNEL_EXP, COMPOSITE_SOFTOR>
                                                : backward<T, KERNEL_EXP, COMPOSITE_MAX>)
               : (composite == COMPOSITE_SOFTOR ? backward<T, KERNEL_SIGMOID, COMPOSITE_SOFTOR>
                                                : backward<T, KERNEL_SIGMOID, COMPOSITE_MAX>);
  f(strokes, b0, b1, n, px, W, py, H, sigma2, cutoff_d2, T(inv_temperature), grad_ink, acc_a,
    acc_b, grad);
}

}  // namespace

// C entry points, one pair per dtype; each handles sketches [b0, b1) of a contiguous batch.
#define ENTRY_POINTS(T, SUFFIX)                                                              \
  extern "C" void raster_forward_##SUFFIX(                                                   \
      int kernel, int composite, const T* strokes, int64_t b0, int64_t b1, int64_t n,        \
      const T* px, int64_t W, const T* py, int64_t H, double sigma2, double cutoff_d2,       \
      double inv_temperature, int invert, T* out, T* acc_a, T* acc_b) {                      \
    forward_any<T>(kernel, composite, strokes, b0, b1, n, px, W, py, H, sigma2, cutoff_d2,   \
                   inv_temperature, invert, out, acc_a, acc_b);                              \
  }                                                                                          \
  extern "C" void raster_backward_##SUFFIX(                                                  \
      int kernel, int composite, const T* strokes, int64_t b0, int64_t b1, int64_t n,        \
      const T* px, int64_t W, const T* py, int64_t H, double sigma2, double cutoff_d2,       \
      double inv_temperature, const T* grad_ink, const T* acc_a, const T* acc_b, T* grad) {  \
    backward_any<T>(kernel, composite, strokes, b0, b1, n, px, W, py, H, sigma2, cutoff_d2,  \
                    inv_temperature, grad_ink, acc_a, acc_b, grad);                          \
  }

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)
"""

KERNEL_CODES = {"exp": 0, "sigmoid": 1}
COMPOSITE_CODES = {"softor": 0, "max": 1}

_library: ctypes.CDLL | None = None
_load_error: str | None = None
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def load() -> tuple[ctypes.CDLL | None, str]:
    """Build (once per machine, cached) and load the kernel; returns (library or None, note)."""
    global _library, _load_error
    if _library is None and _load_error is None:
        try:
            path = _build()
            library = ctypes.CDLL(str(path))
            for name in ("raster_forward_f32", "raster_forward_f64"):
                getattr(library, name).restype = None
            for name in ("raster_backward_f32", "raster_backward_f64"):
                getattr(library, name).restype = None
            _library = library
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _load_error = str(error)
    if _library is not None:
        return _library, "compiled C++ CPU kernel"
    return None, f"compiled CPU kernel unavailable ({_load_error})"


def _compile_flags() -> list[str]:
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fopenmp-simd"]
    # Tune for this CPU only on Linux, where the cache key includes its feature flags.
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        flags.append("-march=native")
    elif platform.system() == "Linux" and platform.machine() == "aarch64":
        flags.append("-mcpu=native")
    return flags


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.startswith(keys)}))


def _build() -> Path:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None or shutil.which(compiler) is None:
        raise RuntimeError("no C++ compiler found; set CXX or install g++/clang++")
    flags = _compile_flags()
    key = hashlib.sha256(
        "\n".join([SOURCE, compiler, *flags, _cpu_signature(), torch.__version__]).encode()
    ).hexdigest()[:16]
    cache = Path(
        os.environ.get("SKETCHENV_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sketchenv"
    )
    target = cache / f"raster_kernel_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        source = Path(tmp) / "raster_kernel.cpp"
        source.write_text(SOURCE)
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *flags, str(source), "-o", str(built)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: concurrent builders each install a whole file
    return target


def _executor(workers: int) -> ThreadPoolExecutor:
    """A thread pool per process (rebuilt after fork or when torch's thread count changes)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, "sketchenv-raster"))
    return _pool[2]


def _call(library: ctypes.CDLL, name: str, strokes: Tensor, spec: tuple, *tail) -> None:
    """Call kernel entry point `name` over sketch ranges split across torch's CPU threads."""
    px, py, sigma2, cutoff_d2, kernel, composite, inv_temperature = spec
    n_sketches, n_strokes, _ = strokes.shape
    function = getattr(library, f"{name}_{'f64' if strokes.dtype == torch.float64 else 'f32'}")
    tail_args = [
        ctypes.c_void_p(t.data_ptr()) if isinstance(t, Tensor) else ctypes.c_int(t) for t in tail
    ]

    def args(b0: int, b1: int) -> list:
        return [
            ctypes.c_int(KERNEL_CODES[kernel]),
            ctypes.c_int(COMPOSITE_CODES[composite]),
            ctypes.c_void_p(strokes.data_ptr()),
            ctypes.c_int64(b0),
            ctypes.c_int64(b1),
            ctypes.c_int64(n_strokes),
            ctypes.c_void_p(px.data_ptr()),
            ctypes.c_int64(px.numel()),
            ctypes.c_void_p(py.data_ptr()),
            ctypes.c_int64(py.numel()),
            ctypes.c_double(sigma2),
            ctypes.c_double(cutoff_d2),
            ctypes.c_double(inv_temperature),
            *tail_args,
        ]

    workers = max(1, min(torch.get_num_threads(), n_sketches))
    if workers == 1:
        function(*args(0, n_sketches))
        return
    bounds = [n_sketches * i // workers for i in range(workers + 1)]
    pool = _executor(workers)
    jobs = [pool.submit(function, *args(b0, b1)) for b0, b1 in itertools.pairwise(bounds)]
    for job in jobs:
        job.result()


def forward(library: ctypes.CDLL, strokes: Tensor, spec: tuple, invert: bool):
    """Render contiguous CPU strokes [B, n, 4]; returns (sketch, aggregate A, aggregate B)."""
    shape = (strokes.shape[0], spec[1].numel(), spec[0].numel())
    out, acc_a, acc_b = (strokes.new_empty(shape) for _ in range(3))
    _call(library, "raster_forward", strokes, spec, int(invert), out, acc_a, acc_b)
    return out, acc_a, acc_b


def backward(
    library: ctypes.CDLL,
    strokes: Tensor,
    spec: tuple,
    grad_ink: Tensor,
    acc_a: Tensor,
    acc_b: Tensor,
) -> Tensor:
    """Gradient wrt strokes, given the gradient wrt the (non-inverted) ink and the aggregates."""
    grad = torch.empty_like(strokes)
    _call(library, "raster_backward", strokes, spec, grad_ink, acc_a, acc_b, grad)
    return grad
