"""Compiled CPU kernel for sketchenv.raster: built on first use with the system C++ compiler.

The kernel walks each stroke over only the pixels where its ink can exceed the cut-off
(`cutoff_d2`, chosen by the caller so that the skipped ink is below float precision): a band
around the segment, row by row, in aligned 8-pixel blocks that vectorise. Forward keeps two
per-pixel aggregates; backward recomputes each stroke's pixels from them, so nothing of size
sketches × strokes × pixels ever exists.

It is plain C++ without Python or torch headers (builds in about two seconds) called through
ctypes, which releases the GIL. Sketches are shared out with OpenMP, which resolves to the
libgomp torch has already loaded, so the kernel uses torch's own thread pool. If no compiler is
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
from pathlib import Path

import torch
from torch import Tensor

SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

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
    // Shorter than ~1e-19 is a dot: 1 / length2 must stay finite.
    const bool is_dot = !(length2 > std::numeric_limits<T>::min());
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

// The pixels within `radius` of a stroke (a superset): rows of its y-extent, and per row the
// columns of its bounding box intersected with the band |cross(p - a, b - a)| <= radius |b - a|
// around its line, widened by a hundredth of a pixel against rounding.
struct Footprint {
  int64_t row0, row1;
  double x_lo, x_hi;         // bounding box columns, in pixel units
  double center0, slope;     // band centre in pixel units: center0 + slope * y
  double half;               // band half-width in pixel units (infinite: no band)
  double col_scale;
};

template <typename T>
Footprint footprint(const T* s, double radius, int64_t H, int64_t W) {
  const double x0 = s[0], y0 = s[1], x1 = s[2], y1 = s[3], dx = x1 - x0, dy = y1 - y0;
  const double row_scale = 0.5 * double(H - 1), col_scale = 0.5 * double(W - 1);
  Footprint f;
  const double r_lo = (std::min(y0, y1) - radius + 1.0) * row_scale - 0.01;
  const double r_hi = (std::max(y0, y1) + radius + 1.0) * row_scale + 0.01;
  f.row0 = int64_t(std::ceil(std::max(r_lo, 0.0)));
  f.row1 = int64_t(std::floor(std::min(r_hi, double(H - 1))));
  f.x_lo = (std::min(x0, x1) - radius + 1.0) * col_scale - 0.01;
  f.x_hi = (std::max(x0, x1) + radius + 1.0) * col_scale + 0.01;
  f.col_scale = col_scale;
  if (dy != 0.0) {
    f.slope = dx / dy * col_scale;
    f.center0 = (x0 + 1.0) * col_scale - y0 * f.slope;
    f.half = radius * std::sqrt(dx * dx + dy * dy) / std::abs(dy) * col_scale + 0.01;
  } else {  // horizontal or a dot: the rows already bound the distance
    f.slope = f.center0 = 0.0;
    f.half = HUGE_VAL;
  }
  return f;
}

inline bool columns(const Footprint& f, double y, int64_t W, int64_t& c0, int64_t& c1) {
  const double center = f.center0 + f.slope * y;
  const double lo = std::max({f.x_lo, center - f.half, 0.0});
  const double hi = std::min({f.x_hi, center + f.half, double(W - 1)});
  if (!(lo <= hi)) return false;
  c0 = int64_t(std::ceil(lo));
  c1 = int64_t(std::floor(hi));
  return c0 <= c1;
}

// Pixels are visited in runs of whole aligned blocks of kBlock columns, so the inner loops
// vectorise with no scalar remainder. The aggregate planes have rows padded to a multiple of
// kBlock (their `stride`); the extra pixels a run covers are computed exactly and forward and
// backward visit the same runs, so the padding changes nothing but speed.
constexpr int64_t kBlock = 8;

template <typename T>
struct Canvas {
  int64_t H, W, stride;
  std::vector<T> px;  // column centres, continued linearly into the padding
  const T* py;

  Canvas(const T* px_in, int64_t W_, const T* py_in, int64_t H_)
      : H(H_), W(W_), stride((W_ + kBlock - 1) / kBlock * kBlock), px(stride), py(py_in) {
    for (int64_t c = 0; c < stride; ++c)
      px[c] = c < W ? px_in[c] : px_in[W - 1] + T(c - W + 1) * (px_in[W - 1] - px_in[W - 2]);
  }

  // Calls body(row, first_column, end_column) for the run of blocks covering each row of the
  // stroke's footprint.
  template <typename Body>
  void visit(const T* s, double radius, Body&& body) const {
    const Footprint f = footprint(s, radius, H, W);
    for (int64_t row = f.row0; row <= f.row1; ++row) {
      int64_t c0, c1;
      if (columns(f, double(py[row]), W, c0, c1))
        body(row, c0 / kBlock * kBlock, (c1 / kBlock + 1) * kBlock);
    }
  }
};

template <typename T, int KERNEL, int COMPOSITE>
void forward(const T* strokes, int64_t batch, int64_t n, const T* px, int64_t W,
             const T* py, int64_t H, double sigma2, double cutoff_d2, T inv_temperature,
             bool invert, T* out, T* acc_a, T* acc_b, int threads) {
  const Canvas<T> canvas(px, W, py, H);
  const T inv_sigma2 = T(1.0 / sigma2);
  const double radius = std::sqrt(cutoff_d2);
  const int64_t S = canvas.stride;
#pragma omp parallel for num_threads(threads) if (threads > 1 && batch > 1) schedule(dynamic, 1)
  for (int64_t b = 0; b < batch; ++b) {
    // soft-or: A = product of the non-zero (1 - r), B = number of zero factors;
    // max: A = sum of exp(r / T), B = sum of r exp(r / T), then the ink B / A.
    T* A = acc_a + b * H * S;
    T* B = acc_b + b * H * S;
    std::fill(A, A + H * S, COMPOSITE == COMPOSITE_SOFTOR ? T(1) : T(n));
    std::fill(B, B + H * S, T(0));
    for (int64_t i = 0; i < n; ++i) {
      const T* s = strokes + (b * n + i) * 4;
      const Stroke<T> stroke(s);
      canvas.visit(s, radius, [&](int64_t row, int64_t c_begin, int64_t c_end) {
        const T uy = py[row] - stroke.y0;
        T* a = A + row * S;
        T* z = B + row * S;
        const T* x = canvas.px.data();
#pragma omp simd
        for (int64_t c = c_begin; c < c_end; ++c) {
          T t, ex, ey, r;
          pixel<T, KERNEL>(stroke, x[c] - stroke.x0, uy, inv_sigma2, t, ex, ey, r);
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
      });
    }
    for (int64_t row = 0; row < H; ++row) {
      T* o = out + (b * H + row) * W;
      T* a = A + row * S;
      T* z = B + row * S;
      for (int64_t c = 0; c < W; ++c) {
        if (COMPOSITE == COMPOSITE_SOFTOR) {
          const T paper = z[c] > T(0) ? T(0) : a[c];
          o[c] = invert ? paper : T(1) - paper;
        } else {
          z[c] = z[c] / a[c];
          o[c] = invert ? T(1) - z[c] : z[c];
        }
      }
    }
  }
}

template <typename T, int KERNEL, int COMPOSITE>
void backward(const T* strokes, int64_t batch, int64_t n, const T* px, int64_t W,
              const T* py, int64_t H, double sigma2, double cutoff_d2, T inv_temperature,
              const T* grad_ink, const T* acc_a, const T* acc_b, T* grad, int threads) {
  const Canvas<T> canvas(px, W, py, H);
  const T inv_sigma2 = T(1.0 / sigma2);
  const T two_over_sigma2 = T(2.0 / sigma2);
  const double radius = std::sqrt(cutoff_d2);
  const int64_t S = canvas.stride;
#pragma omp parallel num_threads(threads) if (threads > 1 && batch > 1)
  {
    std::vector<T> padded(S == W ? 0 : H * S);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      // The incoming gradient, zero in the padding: the padding's (finite) terms vanish.
      const T* G = grad_ink + b * H * W;
      if (S != W) {
        for (int64_t row = 0; row < H; ++row) {
          std::copy(G + row * W, G + (row + 1) * W, padded.data() + row * S);
          std::fill(padded.data() + row * S + W, padded.data() + (row + 1) * S, T(0));
        }
        G = padded.data();
      }
      for (int64_t i = 0; i < n; ++i) {
        const T* s = strokes + (b * n + i) * 4;
        const Stroke<T> stroke(s);
        double ax = 0, ay = 0, bx = 0, by = 0;  // per-row partial sums are added in double
        canvas.visit(s, radius, [&](int64_t row, int64_t c_begin, int64_t c_end) {
          const T uy = py[row] - stroke.y0;
          const T* g = G + row * S;
          const T* a = acc_a + (b * H + row) * S;
          const T* z = acc_b + (b * H + row) * S;
          const T* x = canvas.px.data();
          T rax = 0, ray = 0, rbx = 0, rby = 0;
#pragma omp simd reduction(+ : rax, ray, rbx, rby)
          for (int64_t c = c_begin; c < c_end; ++c) {
            T t, ex, ey, r;
            pixel<T, KERNEL>(stroke, x[c] - stroke.x0, uy, inv_sigma2, t, ex, ey, r);
            T grad_r;
            if (COMPOSITE == COMPOSITE_SOFTOR) {  // product of the other factors, exact at 0
              const T f = T(1) - r;
              const T others = z[c] == T(0) ? a[c] / (f == T(0) ? T(1) : f)
                               : (z[c] == T(1) && f == T(0)) ? a[c] : T(0);
              grad_r = g[c] * others;
            } else {  // d/dr_i of sum_j softmax(r/T)_j r_j
              const T e = exp_t(r * inv_temperature);
              grad_r = g[c] * (e / a[c]) * (T(1) + (r - z[c]) * inv_temperature);
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
        });
        T* out = grad + (b * n + i) * 4;
        out[0] = T(ax);
        out[1] = T(ay);
        out[2] = T(bx);
        out[3] = T(by);
      }
    }
  }
}

template <typename T>
void forward_any(int kernel, int composite, const T* strokes, int64_t batch, int64_t n,
                 const T* px, int64_t W, const T* py, int64_t H, double sigma2, double cutoff_d2,
                 double inv_temperature, int invert, T* out, T* acc_a, T* acc_b, int threads) {
  auto f = kernel == KERNEL_EXP
               ? (composite == COMPOSITE_SOFTOR ? forward<T, KERNEL_EXP, COMPOSITE_SOFTOR>
                                                : forward<T, KERNEL_EXP, COMPOSITE_MAX>)
               : (composite == COMPOSITE_SOFTOR ? forward<T, KERNEL_SIGMOID, COMPOSITE_SOFTOR>
                                                : forward<T, KERNEL_SIGMOID, COMPOSITE_MAX>);
  f(strokes, batch, n, px, W, py, H, sigma2, cutoff_d2, T(inv_temperature), invert != 0, out,
    acc_a, acc_b, threads);
}

template <typename T>
void backward_any(int kernel, int composite, const T* strokes, int64_t batch, int64_t n,
                  const T* px, int64_t W, const T* py, int64_t H, double sigma2,
                  double cutoff_d2, double inv_temperature, const T* grad_ink, const T* acc_a,
                  const T* acc_b, T* grad, int threads) {
  auto f = kernel == KERNEL_EXP
               ? (composite == COMPOSITE_SOFTOR ? backward<T, KERNEL_EXP, COMPOSITE_SOFTOR>
                                                : backward<T, KERNEL_EXP, COMPOSITE_MAX>)
               : (composite == COMPOSITE_SOFTOR ? backward<T, KERNEL_SIGMOID, COMPOSITE_SOFTOR>
                                                : backward<T, KERNEL_SIGMOID, COMPOSITE_MAX>);
  f(strokes, batch, n, px, W, py, H, sigma2, cutoff_d2, T(inv_temperature), grad_ink, acc_a,
    acc_b, grad, threads);
}

}  // namespace

// C entry points, one pair per dtype, for contiguous [batch, n, 4] strokes and [batch, H, W]
// planes; sketches are shared out over `threads` OpenMP threads.
extern "C" {
void raster_forward_f32(int kernel, int composite, const float* strokes, int64_t batch,
                        int64_t n, const float* px, int64_t W, const float* py, int64_t H,
                        double sigma2, double cutoff_d2, double inv_temperature, int threads,
                        int invert, float* out, float* acc_a, float* acc_b) {
  forward_any(kernel, composite, strokes, batch, n, px, W, py, H, sigma2, cutoff_d2,
              inv_temperature, invert, out, acc_a, acc_b, threads);
}
void raster_forward_f64(int kernel, int composite, const double* strokes, int64_t batch,
                        int64_t n, const double* px, int64_t W, const double* py, int64_t H,
                        double sigma2, double cutoff_d2, double inv_temperature, int threads,
                        int invert, double* out, double* acc_a, double* acc_b) {
  forward_any(kernel, composite, strokes, batch, n, px, W, py, H, sigma2, cutoff_d2,
              inv_temperature, invert, out, acc_a, acc_b, threads);
}
void raster_backward_f32(int kernel, int composite, const float* strokes, int64_t batch,
                         int64_t n, const float* px, int64_t W, const float* py, int64_t H,
                         double sigma2, double cutoff_d2, double inv_temperature, int threads,
                         const float* grad_ink, const float* acc_a, const float* acc_b,
                         float* grad) {
  backward_any(kernel, composite, strokes, batch, n, px, W, py, H, sigma2, cutoff_d2,
               inv_temperature, grad_ink, acc_a, acc_b, grad, threads);
}
void raster_backward_f64(int kernel, int composite, const double* strokes, int64_t batch,
                         int64_t n, const double* px, int64_t W, const double* py, int64_t H,
                         double sigma2, double cutoff_d2, double inv_temperature, int threads,
                         const double* grad_ink, const double* acc_a, const double* acc_b,
                         double* grad) {
  backward_any(kernel, composite, strokes, batch, n, px, W, py, H, sigma2, cutoff_d2,
               inv_temperature, grad_ink, acc_a, acc_b, grad, threads);
}
}
"""

KERNEL_CODES = {"exp": 0, "sigmoid": 1}
COMPOSITE_CODES = {"softor": 0, "max": 1}
# Least work per thread, counted as strokes × (H + W) (~1 ms): waking a thread for less costs
# more than it saves, especially on a busy machine.
_WORK_PER_THREAD = 1 << 16
_BLOCK = 8  # kBlock in the C++ source: aggregate rows are padded to a multiple of it

_library: ctypes.CDLL | None = None
_load_error: str | None = None


def load() -> tuple[ctypes.CDLL | None, str]:
    """Build (once per machine, cached) and load the kernel; returns (library or None, note)."""
    global _library, _load_error
    if _library is None and _load_error is None:
        try:
            library = ctypes.CDLL(str(_build()))
            for stage, dtype in itertools.product(("forward", "backward"), ("f32", "f64")):
                getattr(library, f"raster_{stage}_{dtype}").restype = None
            _library = library
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _load_error = str(error)
        except AttributeError as error:  # a library without the kernel's entry points
            _load_error = f"the cached kernel library lacks its entry points ({error})"
    if _library is not None:
        return _library, "compiled C++ CPU kernel"
    return None, f"compiled CPU kernel unavailable ({_load_error})"


def _compile_flags(openmp: bool) -> list[str]:
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off"]
    flags.append("-fopenmp" if openmp else "-fopenmp-simd")
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


def _digest_path(library: Path) -> Path:
    return library.with_suffix(".sha256")


def _verified(library: Path) -> bool:
    """Whether ``library`` is whole: its SHA-256 equals the one recorded when it was built
    (a truncated or overwritten file would crash the process when loaded)."""
    try:
        recorded = _digest_path(library).read_text().strip()
        return hashlib.sha256(library.read_bytes()).hexdigest() == recorded
    except OSError:
        return False


def _build() -> Path:
    """Path of the compiled kernel, compiling it into the cache first if needed."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None or shutil.which(compiler) is None:
        raise RuntimeError("no C++ compiler found; set CXX or install g++/clang++")
    cache = Path(
        os.environ.get("SKETCHENV_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sketchenv"
    )
    errors = []
    for openmp in (True, False):  # without OpenMP (e.g. Apple clang) it runs on one thread
        flags = _compile_flags(openmp)
        key = "\n".join([SOURCE, compiler, *flags, _cpu_signature(), torch.__version__])
        target = cache / f"raster_kernel_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
        if _verified(target):
            return target
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            source, built = Path(tmp) / "raster_kernel.cpp", Path(tmp) / target.name
            source.write_text(SOURCE)
            command = [compiler, *flags, str(source), "-o", str(built)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                # Atomic renames, digest first: concurrent builders each install whole files,
                # and a library that does not match its digest is rebuilt, never loaded.
                digest = Path(tmp) / "digest"
                digest.write_text(hashlib.sha256(built.read_bytes()).hexdigest())
                os.replace(digest, _digest_path(target))
                os.replace(built, target)
                return target
            errors.append(result.stderr.strip()[-1000:])
    raise RuntimeError(f"{compiler} failed: {errors[-1]}")


def _call(library: ctypes.CDLL, name: str, strokes: Tensor, spec: tuple, *tail) -> None:
    """Call kernel entry point `name` on [B, n, 4] strokes, over up to torch's CPU threads."""
    px, py, sigma2, cutoff_d2, kernel, composite, inv_temperature = spec
    suffix = "f64" if strokes.dtype == torch.float64 else "f32"
    work = strokes.shape[0] * strokes.shape[1] * (px.numel() + py.numel())
    threads = max(1, min(torch.get_num_threads(), work // _WORK_PER_THREAD))
    getattr(library, f"{name}_{suffix}")(
        ctypes.c_int(KERNEL_CODES[kernel]),
        ctypes.c_int(COMPOSITE_CODES[composite]),
        ctypes.c_void_p(strokes.data_ptr()),
        ctypes.c_int64(strokes.shape[0]),
        ctypes.c_int64(strokes.shape[1]),
        ctypes.c_void_p(px.data_ptr()),
        ctypes.c_int64(px.numel()),
        ctypes.c_void_p(py.data_ptr()),
        ctypes.c_int64(py.numel()),
        ctypes.c_double(sigma2),
        ctypes.c_double(cutoff_d2),
        ctypes.c_double(inv_temperature),
        ctypes.c_int(threads),
        *(
            ctypes.c_void_p(t.data_ptr()) if isinstance(t, Tensor) else ctypes.c_int(t)
            for t in tail
        ),
    )


def forward(library: ctypes.CDLL, strokes: Tensor, spec: tuple, invert: bool):
    """Render contiguous CPU strokes [B, n, 4]; returns (sketch, aggregate A, aggregate B).

    The aggregates are [B, H, W'] with W' the width rounded up to a multiple of 8 (_BLOCK).
    """
    batch, height, width = strokes.shape[0], spec[1].numel(), spec[0].numel()
    out = strokes.new_empty(batch, height, width)
    stride = -(-width // _BLOCK) * _BLOCK
    acc_a, acc_b = (strokes.new_empty(batch, height, stride) for _ in range(2))
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
