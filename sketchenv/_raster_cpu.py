"""Compiled CPU kernel for sketchenv.raster: built on first use with the system C++ compiler.

The kernel walks each stroke over only the pixels where its ink can exceed the cut-off
(`cutoff_d2`, chosen by the caller so that the skipped ink is below float precision): a band
around the segment, row by row, in aligned 8-pixel blocks that vectorise. A chord of a curve's
polyline only visits where it can be the closest chord (its slab and the wedge at its end).
Forward keeps two per-pixel aggregates; backward recomputes each stroke's pixels from them, so
nothing of size sketches × strokes × pixels ever exists.

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

// The per-pixel helpers are forced inline: a call left in an `omp simd` loop stops it
// vectorising (GCC's inliner gives up on them in the larger instantiations).
#define INLINE inline __attribute__((always_inline))

enum { KERNEL_EXP = 0, KERNEL_SIGMOID = 1 };
enum { COMPOSITE_SOFTOR = 0, COMPOSITE_MAX = 1, COMPOSITE_COLOUR = 2 };

// exp(x) from arithmetic only (Cody-Waite reduction, degree-7 Taylor polynomial, exponent
// bits), so loops calling it vectorise and scalar and vector lanes give identical results.
// Relative error ~2e-7 for x in [-87, 88].
INLINE float exp_approx(float x) {
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
INLINE float exp_t(float x) { return exp_approx(x); }
INLINE double exp_t(double x) { return std::exp(x); }

// Backward caps z = d² / (σ² width²) here: the ink is already exactly 0 beyond it in both
// dtypes (so k is unchanged), and a finite z keeps the width gradient's dr · z at 0 rather
// than 0 · inf for pixels no chord reached (their d² is infinite).
constexpr double kMaxZ = 1e4;

// One chord a -> b of a stroke's polyline, from s = (x0, y0, x1, y1).
template <typename T>
struct Segment {
  T x0, y0, dx, dy, inv_length2, t_lo, t_hi, dot;
  explicit Segment(const T* s) : x0(s[0]), y0(s[1]), dx(s[2] - s[0]), dy(s[3] - s[1]) {
    const T length2 = dx * dx + dy * dy;
    // Shorter than ~1e-19 is a dot: 1 / length2 must stay finite.
    const bool is_dot = !(length2 > std::numeric_limits<T>::min());
    inv_length2 = is_dot ? T(0) : T(1) / length2;
    t_lo = is_dot ? T(0.5) : T(0);  // a dot takes t = 1/2: its gradient is shared by both ends
    t_hi = is_dot ? T(0.5) : T(1);
    dot = is_dot ? T(1) : T(0);
  }
};

// Offset e = p - closest point, its parameter t, and d² = |e|² at one pixel (u = p - a),
// without branches: e = (perpendicular part, exact via the cross product) + (overshoot past an
// end) + (u for a dot). Inside the chord t_raw - t is exactly 0, so e has no spurious
// along-chord part. The same operations as the PyTorch path's `_stroke_geometry`.
template <typename T>
INLINE T distance2(const Segment<T>& s, T ux, T uy, T& t, T& ex, T& ey) {
  const T t_raw = (ux * s.dx + uy * s.dy) * s.inv_length2;
  t = std::min(std::max(t_raw, s.t_lo), s.t_hi);
  const T k = (ux * s.dy - uy * s.dx) * s.inv_length2;
  const T past = t_raw - t;
  ex = k * s.dy + past * s.dx + s.dot * ux;
  ey = past * s.dy - k * s.dx + s.dot * uy;
  return ex * ex + ey * ey;
}

// The per-stroke constants: opacity multiplies the ink, width scales σ (inv_s = 1 / (σ² w²)).
template <typename T>
struct Style {
  T inv_s, two_inv_s, inv_width, opacity, colour[3];
  Style(const T* s, double sigma2)
      : inv_s(T(1.0 / (sigma2 * double(s[0]) * double(s[0])))),
        two_inv_s(T(2.0 / (sigma2 * double(s[0]) * double(s[0])))),
        inv_width(T(1) / s[0]),
        opacity(s[1]),
        colour{s[2], s[3], s[4]} {}
};

// The kernel k(z) (without the opacity) for z = d² / (σ² w²).
template <typename T, int KERNEL>
INLINE T kernel_of(T z) {
  return KERNEL == KERNEL_EXP ? exp_t(-z) : T(2) / (T(1) + exp_t(z));
}

// The pixels within `radius` of a chord (a superset): rows of its y-extent, and per row the
// columns of its bounding box intersected with the band |cross(p - a, b - a)| <= radius |b - a|
// around its line, widened by a hundredth of a pixel against rounding. A chord of a longer
// polyline may also be cut to the slab t0 <= t <= t1 of its parameter t (see `Chords`).
struct Footprint {
  int64_t row0, row1;
  double x_lo, x_hi;      // bounding box columns, in pixel units
  double center0, slope;  // band centre in pixel units: center0 + slope * y
  double half;            // band half-width in pixel units (infinite: no band)
  double slab_lo, slab_hi, slab_slope;  // slab columns: slab_lo/hi + slab_slope * y
};

template <typename T>
Footprint footprint(const T* s, double radius, int64_t H, int64_t W,
                    double t0 = -HUGE_VAL, double t1 = HUGE_VAL) {
  const double x0 = s[0], y0 = s[1], x1 = s[2], y1 = s[3], dx = x1 - x0, dy = y1 - y0;
  const double row_scale = 0.5 * double(H - 1), col_scale = 0.5 * double(W - 1);
  const double length2 = dx * dx + dy * dy;
  double y_lo = std::min(y0, y1) - radius, y_hi = std::max(y0, y1) + radius;
  Footprint f;
  f.slab_lo = -HUGE_VAL;
  f.slab_hi = HUGE_VAL;
  f.slab_slope = 0.0;
  if (length2 > 0.0 && (t0 > -HUGE_VAL || t1 < HUGE_VAL)) {
    // The rectangle a + t (b - a) + q n, t in [t0, t1], |q| <= radius (n the unit normal).
    const double reach = radius * std::abs(dx) / std::sqrt(length2);  // radius |n_y|
    y_lo = std::max(y_lo, y0 + std::min(t0 * dy, t1 * dy) - reach);
    y_hi = std::min(y_hi, y0 + std::max(t0 * dy, t1 * dy) + reach);
    if (dx != 0.0) {  // t(x, y) = t0 or t1 at x = x0 + (t length2 - (y - y0) dy) / dx
      const double lo = (x0 + (t0 * length2 + y0 * dy) / dx + 1.0) * col_scale;
      const double hi = (x0 + (t1 * length2 + y0 * dy) / dx + 1.0) * col_scale;
      f.slab_lo = std::min(lo, hi) - 0.01;
      f.slab_hi = std::max(lo, hi) + 0.01;
      f.slab_slope = -dy / dx * col_scale;
    }
  }
  f.row0 = int64_t(std::ceil(std::max((y_lo + 1.0) * row_scale - 0.01, 0.0)));
  f.row1 = int64_t(std::floor(std::min((y_hi + 1.0) * row_scale + 0.01, double(H - 1))));
  f.x_lo = (std::min(x0, x1) - radius + 1.0) * col_scale - 0.01;
  f.x_hi = (std::max(x0, x1) + radius + 1.0) * col_scale + 0.01;
  if (dy != 0.0) {
    f.slope = dx / dy * col_scale;
    f.center0 = (x0 + 1.0) * col_scale - y0 * f.slope;
    f.half = radius * std::sqrt(length2) / std::abs(dy) * col_scale + 0.01;
  } else {  // horizontal or a dot: the rows already bound the distance
    f.slope = f.center0 = 0.0;
    f.half = HUGE_VAL;
  }
  return f;
}

inline bool columns(const Footprint& f, double y, int64_t W, int64_t& c0, int64_t& c1) {
  const double center = f.center0 + f.slope * y, slab = f.slab_slope * y;
  const double lo = std::max({f.x_lo, center - f.half, f.slab_lo + slab, 0.0});
  const double hi = std::min({f.x_hi, center + f.half, f.slab_hi + slab, double(W - 1)});
  if (!(lo <= hi)) return false;
  c0 = int64_t(std::ceil(lo));
  c1 = int64_t(std::floor(hi));
  return c0 <= c1;
}

// Pixels are visited in runs of whole aligned blocks of kBlock columns, so the inner loops
// vectorise with no scalar remainder. The per-pixel planes have rows padded to a multiple of
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
};

// A chord's run of blocks on one row: columns [begin, end) of kept chord `chord`.
struct Run {
  int64_t chord, begin, end;
};

// One stroke's polyline, split into its chords, and per row the runs of the chords that reach
// that row within the cut-off and their slab: a pixel's closest chord is among them whenever
// its ink can exceed the cut-off, so a curve costs per pixel about the one or two chords that
// can be closest there, not all of them. Per-thread scratch, reused from stroke to stroke.
template <typename T>
struct Chords {
  std::vector<Segment<T>> segment;  // the kept chords
  std::vector<int64_t> first_point;  // polyline index of each kept chord's first point
  std::vector<Run> table;  // the runs of row r: table[r * kept chords + j] for j < filled[r]
  std::vector<int64_t> filled;

  // Keeps chord 0 and every chord that is not a dot or follows one that is not: a dot after a
  // dot is the same point (the padding of a curve repeats its end), whose distance equals the
  // earlier one's to the last bit, so it can never be the first closest chord.
  void split(const T* points, int64_t P) {
    segment.clear();
    first_point.clear();
    bool previous_dot = false;
    for (int64_t j = 0; j + 1 < P; ++j) {
      const Segment<T> s(points + 2 * j);
      const bool is_dot = s.dot != T(0);
      if (j > 0 && is_dot && previous_dot) continue;
      previous_dot = is_dot;
      segment.push_back(s);
      first_point.push_back(j);
    }
  }

  // How far (in t) chord k's slab reaches past its ends: the start of the polyline (or a dot
  // before it) needs its cap, radius / length; at an end vertex v shared with the next chord, the
  // pixels closest to v lie in the wedge t_k >= 1, t_next <= 0 within the radius, whose reach
  // past v along chord k is radius · sin(turn) (radius beyond a right-angle turn, and at the end
  // of the polyline or before a dot). Elsewhere the chord is not the first closest: interior
  // points of other chords or their ends are, and at a shared vertex both chords' closest point
  // is the same polyline point, so trimming changes no distance and no gradient.
  double start_reach(int64_t k, double radius) const {
    if (k > 0 && segment[k - 1].dot == T(0)) return 0.0;
    return radius * std::sqrt(double(segment[k].inv_length2));
  }
  double end_reach(int64_t k, double radius) const {
    const Segment<T>& s = segment[k];
    const double inv_length = std::sqrt(double(s.inv_length2));
    if (k + 1 == int64_t(segment.size()) || segment[k + 1].dot != T(0))
      return radius * inv_length;
    const Segment<T>& next = segment[k + 1];
    const double dot = double(s.dx) * next.dx + double(s.dy) * next.dy;
    const double cross = double(s.dx) * next.dy - double(s.dy) * next.dx;
    const double sine = dot > 0.0 ? std::abs(cross) / std::sqrt(
        (double(s.dx) * s.dx + double(s.dy) * s.dy) * (double(next.dx) * next.dx +
        double(next.dy) * next.dy)) : 1.0;
    return radius * std::min(sine, 1.0) * inv_length;
  }

  // Calls body(row, runs, count, begin, end) for each row some chord reaches, with the runs of
  // the chords that reach it (in chord order, so the first of equal distances wins as in the
  // PyTorch path) and [begin, end) their union, the row's visited pixels.
  template <typename Body>
  void visit(const Canvas<T>& canvas, const T* points, double radius, Body&& body) {
    const int64_t H = canvas.H, W = canvas.W;
    if (segment.size() == 1) {  // a line: no bookkeeping
      const Footprint f = footprint(points + 2 * first_point[0], radius, H, W);
      for (int64_t row = f.row0; row <= f.row1; ++row) {
        int64_t c0, c1;
        if (columns(f, double(canvas.py[row]), W, c0, c1)) {
          const Run run{0, c0 / kBlock * kBlock, (c1 / kBlock + 1) * kBlock};
          body(row, &run, int64_t(1), run.begin, run.end);
        }
      }
      return;
    }
    // At most one run per chord and row, filled straight into its row's slots (in chord
    // order) of a table sized once: the loop below stays free of calls.
    const int64_t n_chords = int64_t(segment.size());
    if (int64_t(table.size()) < n_chords * H) table.resize(n_chords * H);
    filled.assign(H, 0);
    int64_t row0 = H, row1 = -1;
    for (int64_t k = 0; k < n_chords; ++k) {
      const T* a = points + 2 * first_point[k];
      const bool dot = segment[k].dot != T(0);  // a dot keeps its whole disc
      const Footprint f = dot ? footprint(a, radius, H, W)
                              : footprint(a, radius, H, W, -start_reach(k, radius),
                                          1.0 + end_reach(k, radius));
      row0 = std::min(row0, f.row0);
      row1 = std::max(row1, f.row1);
      for (int64_t row = f.row0; row <= f.row1; ++row) {
        int64_t c0, c1;
        if (columns(f, double(canvas.py[row]), W, c0, c1))
          table[row * n_chords + filled[row]++] = {k, c0 / kBlock * kBlock,
                                                   (c1 / kBlock + 1) * kBlock};
      }
    }
    for (int64_t row = row0; row <= row1; ++row) {
      const int64_t count = filled[row];
      if (count == 0) continue;
      const Run* runs = table.data() + row * n_chords;
      int64_t begin = runs[0].begin, end = runs[0].end;
      for (int64_t k = 1; k < count; ++k) {
        begin = std::min(begin, runs[k].begin);
        end = std::max(end, runs[k].end);
      }
      body(row, runs, count, begin, end);
    }
  }
};

// The least d² over a row's runs (infinite where none reaches), into d2[begin, end).
template <typename T>
void nearest(const Chords<T>& chords, const Run* runs, int64_t count, int64_t begin,
             int64_t end, const T* x, T y, T* d2) {
  std::fill(d2 + begin, d2 + end, std::numeric_limits<T>::infinity());
  for (int64_t k = 0; k < count; ++k) {
    const Segment<T> s = chords.segment[runs[k].chord];  // a copy: no aliasing
    const T uy = y - s.y0;
    for (int64_t block = runs[k].begin; block < runs[k].end; block += kBlock) {
#pragma omp simd
      for (int64_t c = block; c < block + kBlock; ++c) {
        T t, ex, ey;
        const T d = distance2(s, x[c] - s.x0, uy, t, ex, ey);
        d2[c] = d < d2[c] ? d : d2[c];
      }
    }
  }
}

// The same with the closest chord's t, offset and index (-1 where none reaches).
template <typename T>
struct Nearest {
  std::vector<T> d2, t, ex, ey, chord;
  explicit Nearest(int64_t stride) : d2(stride), t(stride), ex(stride), ey(stride), chord(stride) {}

  void compute(const Chords<T>& chords, const Run* runs, int64_t count, int64_t begin,
               int64_t end, const T* x, T y) {
    // t, ex and ey count only where `chord` names a chord, which sets them first.
    std::fill(d2.begin() + begin, d2.begin() + end, std::numeric_limits<T>::infinity());
    std::fill(chord.begin() + begin, chord.begin() + end, T(-1));
    T *D = d2.data(), *TT = t.data(), *EX = ex.data(), *EY = ey.data(), *CH = chord.data();
    for (int64_t k = 0; k < count; ++k) {
      const Segment<T> s = chords.segment[runs[k].chord];  // a copy: no aliasing
      const T uy = y - s.y0, index = T(runs[k].chord);
      for (int64_t block = runs[k].begin; block < runs[k].end; block += kBlock) {
#pragma omp simd
        for (int64_t c = block; c < block + kBlock; ++c) {
          T tc, exc, eyc;
          const T d = distance2(s, x[c] - s.x0, uy, tc, exc, eyc);
          const bool closer = d < D[c];
          D[c] = closer ? d : D[c];
          TT[c] = closer ? tc : TT[c];
          EX[c] = closer ? exc : EX[c];
          EY[c] = closer ? eyc : EY[c];
          CH[c] = closer ? index : CH[c];
        }
      }
    }
  }
};

// Forward's per-pixel planes of one sketch row: the aggregates (soft-or and colour: product of
// the non-zero 1 - r and count of zero factors; max: Σ exp(r / T) and Σ r exp(r / T)) and, for
// colour, the running RGB canvas.
template <typename T>
struct ForwardRow {
  T *a, *z, *r0, *r1, *r2;
};

// Adds one stroke's ink at pixel c, from its squared distance.
template <typename T, int KERNEL, int COMPOSITE>
INLINE void deposit(T d2, const Style<T>& st, T inv_temperature, const ForwardRow<T>& p,
                    int64_t c) {
  const T r = st.opacity * kernel_of<T, KERNEL>(d2 * st.inv_s);
  if (COMPOSITE == COMPOSITE_MAX) {
    const T e = exp_t(r * inv_temperature);
    p.a[c] += e - T(1);
    p.z[c] += e * r;
  } else {
    const T f = T(1) - r;
    p.a[c] *= f == T(0) ? T(1) : f;
    p.z[c] += f == T(0) ? T(1) : T(0);
    if (COMPOSITE == COMPOSITE_COLOUR) {  // over: C = C (1 - r) + r c, as the PyTorch path
      p.r0[c] = p.r0[c] * f + r * st.colour[0];
      p.r1[c] = p.r1[c] * f + r * st.colour[1];
      p.r2[c] = p.r2[c] * f + r * st.colour[2];
    }
  }
}

template <typename T, int KERNEL, int COMPOSITE>
void forward(const T* points, const T* style, int64_t batch, int64_t n, int64_t P,
             const T* px, int64_t W, const T* py, int64_t H, double sigma2, double cutoff_d2,
             T inv_temperature, bool invert, T* out, T* acc_a, T* acc_b, int threads) {
  const Canvas<T> canvas(px, W, py, H);
  const double radius = std::sqrt(cutoff_d2);
  const int64_t S = canvas.stride;
  const bool colour = COMPOSITE == COMPOSITE_COLOUR;
#pragma omp parallel num_threads(threads) if (threads > 1 && batch > 1)
  {
    Chords<T> chords;
    std::vector<T> d2(S);
    std::vector<T> rgb(colour ? 3 * H * S : 0);  // the running canvas, padded like A and B
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      T* A = acc_a + b * H * S;
      T* B = acc_b + b * H * S;
      std::fill(A, A + H * S, COMPOSITE == COMPOSITE_MAX ? T(n) : T(1));
      std::fill(B, B + H * S, T(0));
      std::fill(rgb.begin(), rgb.end(), T(invert ? 1 : 0));
      for (int64_t i = 0; i < n; ++i) {
        const T* s = points + (b * n + i) * P * 2;
        const Style<T> stroke_style(style + (b * n + i) * 5, sigma2);
        chords.split(s, P);
        chords.visit(canvas, s, radius * double(style[(b * n + i) * 5]),
                     [&](int64_t row, const Run* runs, int64_t count, int64_t begin,
                         int64_t end) {
          const Style<T> st = stroke_style;  // a local copy: stores cannot alias it
          const ForwardRow<T> p{A + row * S, B + row * S,
                                colour ? rgb.data() + row * S : nullptr,
                                colour ? rgb.data() + (H + row) * S : nullptr,
                                colour ? rgb.data() + (2 * H + row) * S : nullptr};
          const T* x = canvas.px.data();
          if (count == 1) {  // one chord reaches the row: its distance directly
            const Segment<T> seg = chords.segment[runs[0].chord];  // a copy: no aliasing
            const T uy = py[row] - seg.y0;
            for (int64_t block = begin; block < end; block += kBlock) {
#pragma omp simd
              for (int64_t c = block; c < block + kBlock; ++c) {
                T t, ex, ey;
                const T d = distance2(seg, x[c] - seg.x0, uy, t, ex, ey);
                deposit<T, KERNEL, COMPOSITE>(d, st, inv_temperature, p, c);
              }
            }
          } else {
            nearest(chords, runs, count, begin, end, x, py[row], d2.data());
            const T* D = d2.data();
            for (int64_t block = begin; block < end; block += kBlock) {
#pragma omp simd
              for (int64_t c = block; c < block + kBlock; ++c)
                deposit<T, KERNEL, COMPOSITE>(D[c], st, inv_temperature, p, c);
            }
          }
        });
      }
      for (int64_t row = 0; row < H; ++row) {
        T* a = A + row * S;
        T* z = B + row * S;
        if (colour) {
          for (int64_t ch = 0; ch < 3; ++ch)
            std::copy(rgb.data() + (ch * H + row) * S, rgb.data() + (ch * H + row) * S + W,
                      out + ((b * 3 + ch) * H + row) * W);
          continue;
        }
        T* o = out + (b * H + row) * W;
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
}

// Backward's per-pixel planes of one sketch row: the incoming gradient (three channels for
// colour), forward's aggregates and, for colour, the replay's running planes (the canvas below
// the stroke, the prefix product of the non-zero factors and the prefix count of zero ones).
template <typename T>
struct BackwardRow {
  const T *g0, *g1, *g2, *a, *z;
  T *b0, *b1, *b2, *prefix, *zeros;
};

// Per-stroke sums of the gradient wrt width, opacity and colour.
template <typename T>
struct StyleSums {
  T width = 0, opacity = 0, c0 = 0, c1 = 0, c2 = 0;
};

// d loss / d r at pixel c for this stroke, and (colour) the replay's planes moved past it.
template <typename T, int COMPOSITE>
INLINE T grad_of_ink(T r, const Style<T>& st, T inv_temperature, const BackwardRow<T>& p,
                     int64_t c, T& s0, T& s1, T& s2) {
  const T f = T(1) - r;
  if (COMPOSITE == COMPOSITE_SOFTOR) {  // the product of the other factors, exact at 0
    const T others = p.z[c] == T(0)                   ? p.a[c] / (f == T(0) ? T(1) : f)
                     : (p.z[c] == T(1) && f == T(0)) ? p.a[c]
                                                     : T(0);
    return p.g0[c] * others;
  }
  if (COMPOSITE == COMPOSITE_MAX) {  // d/dr_i of sum_j softmax(r/T)_j r_j
    const T e = exp_t(r * inv_temperature);
    return p.g0[c] * (e / p.a[c]) * (T(1) + (r - p.z[c]) * inv_temperature);
  }
  // colour: dC/dr_i = S_i (c_i - C_{i-1}), dC/dc_i = r_i S_i, with S_i the transmittance above
  // stroke i = (all non-zero factors) / (those up to i) when no zero factor lies above it.
  const T prefix = p.prefix[c] * (f == T(0) ? T(1) : f);
  const T zeros = p.zeros[c] + (f == T(0) ? T(1) : T(0));
  p.prefix[c] = prefix;
  p.zeros[c] = zeros;
  const T above = (p.z[c] == zeros && prefix > T(0))
                      ? p.a[c] / std::max(prefix, T(1e-300)) : T(0);
  const T grad_r = ((p.g0[c] * (st.colour[0] - p.b0[c]) + p.g1[c] * (st.colour[1] - p.b1[c])) +
                    p.g2[c] * (st.colour[2] - p.b2[c])) * above;
  const T ra = r * above;
  s0 += p.g0[c] * ra;
  s1 += p.g1[c] * ra;
  s2 += p.g2[c] * ra;
  p.b0[c] = p.b0[c] * f + r * st.colour[0];
  p.b1[c] = p.b1[c] * f + r * st.colour[1];
  p.b2[c] = p.b2[c] * f + r * st.colour[2];
  return grad_r;
}

// At pixel c with squared distance d2: the gradient's factor g_c of the offset e (d loss / d
// closest point = g_c e), adding the width, opacity and colour terms (as `_ink_gradients`) to
// lane l of the style sums `lanes` (width, opacity, colour: kBlock each).
template <typename T, int KERNEL, int COMPOSITE>
INLINE T chain(T d2, const Style<T>& st, T inv_temperature, const BackwardRow<T>& p, int64_t c,
               T* lanes, int64_t l) {
  const T z = std::min(d2 * st.inv_s, T(kMaxZ));
  const T k = kernel_of<T, KERNEL>(z);
  const T r = st.opacity * k;
  const T grad_r = grad_of_ink<T, COMPOSITE>(r, st, inv_temperature, p, c, lanes[2 * kBlock + l],
                                             lanes[3 * kBlock + l], lanes[4 * kBlock + l]);
  const T dk = KERNEL == KERNEL_EXP ? k : k * (T(1) - T(0.5) * k);  // dk / d(-z)
  const T dr = grad_r * st.opacity * dk;
  lanes[l] += dr * (T(2) * z) * st.inv_width;  // dz/dw = -2 z / w
  lanes[kBlock + l] += grad_r * k;
  return dr * st.two_inv_s;
}

// Adds a pixel's d loss / d closest point (gx, gy), at parameter t of its chord, to lane l of
// that chord's sums for its two ends (kBlock each: a.x, a.y, b.x, b.y).
template <typename T>
INLINE void add_to_ends(T* acc, int64_t l, T gx, T gy, T t) {
  acc[l] += gx * (T(1) - t);
  acc[kBlock + l] += gy * (T(1) - t);
  acc[2 * kBlock + l] += gx * t;
  acc[3 * kBlock + l] += gy * t;
}

template <typename T, int KERNEL, int COMPOSITE>
void backward(const T* points, const T* style, int64_t batch, int64_t n, int64_t P,
              const T* px, int64_t W, const T* py, int64_t H, double sigma2, double cutoff_d2,
              T inv_temperature, bool invert, const T* grad_ink, const T* acc_a,
              const T* acc_b, T* grad_points, T* grad_style, int threads) {
  const Canvas<T> canvas(px, W, py, H);
  const double radius = std::sqrt(cutoff_d2);
  const int64_t S = canvas.stride;
  const bool colour = COMPOSITE == COMPOSITE_COLOUR;
  const int64_t channels = colour ? 3 : 1;
#pragma omp parallel num_threads(threads) if (threads > 1 && batch > 1)
  {
    Chords<T> chords;
    Nearest<T> near(S);
    // Partial sums kept per block lane and added up once per stroke (a horizontal sum per run
    // would cost more than a short run): 4 per kept chord (d loss / d its two end points) and
    // 5 for the style (width, opacity, colour).
    std::vector<T> chord_lanes(4 * kBlock * (P - 1)), style_lanes(5 * kBlock);
    std::vector<double> point_sums(2 * P);
    std::vector<T> padded(channels * H * S);  // the gradient, zero in the padding
    std::vector<T> replay(colour ? 5 * H * S : 0);  // below (3), prefix, zeros
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      // The incoming gradient, zero in the padding: the padding's (finite) terms vanish.
      for (int64_t ch = 0; ch < channels; ++ch)
        for (int64_t row = 0; row < H; ++row) {
          const T* g = grad_ink + ((b * channels + ch) * H + row) * W;
          T* to = padded.data() + (ch * H + row) * S;
          std::copy(g, g + W, to);
          std::fill(to + W, to + S, T(0));
        }
      if (colour) {
        std::fill(replay.begin(), replay.begin() + 3 * H * S, T(invert ? 1 : 0));
        std::fill(replay.begin() + 3 * H * S, replay.begin() + 4 * H * S, T(1));
        std::fill(replay.begin() + 4 * H * S, replay.end(), T(0));
      }
      for (int64_t i = 0; i < n; ++i) {
        const T* s = points + (b * n + i) * P * 2;
        const Style<T> stroke_style(style + (b * n + i) * 5, sigma2);
        chords.split(s, P);
        const int64_t n_chords = int64_t(chords.segment.size());
        std::fill(chord_lanes.begin(), chord_lanes.begin() + 4 * kBlock * n_chords, T(0));
        std::fill(style_lanes.begin(), style_lanes.end(), T(0));
        chords.visit(canvas, s, radius * double(style[(b * n + i) * 5]),
                     [&](int64_t row, const Run* runs, int64_t count, int64_t begin,
                         int64_t end) {
          const Style<T> st = stroke_style;  // a local copy: stores cannot alias it
          T* rp = replay.data();
          const T* g = padded.data();
          const BackwardRow<T> p{g + row * S,
                                 colour ? g + (H + row) * S : nullptr,
                                 colour ? g + (2 * H + row) * S : nullptr,
                                 acc_a + (b * H + row) * S,
                                 acc_b + (b * H + row) * S,
                                 colour ? rp + row * S : nullptr,
                                 colour ? rp + (H + row) * S : nullptr,
                                 colour ? rp + (2 * H + row) * S : nullptr,
                                 colour ? rp + (3 * H + row) * S : nullptr,
                                 colour ? rp + (4 * H + row) * S : nullptr};
          const T* x = canvas.px.data();
          T* sl = style_lanes.data();
          if (count == 1) {  // one chord reaches the row: its geometry directly
            const Segment<T> seg = chords.segment[runs[0].chord];  // a copy: no aliasing
            const T uy = py[row] - seg.y0;
            T* acc = chord_lanes.data() + 4 * kBlock * runs[0].chord;
            for (int64_t block = begin; block < end; block += kBlock) {
#pragma omp simd
              for (int64_t l = 0; l < kBlock; ++l) {
                const int64_t c = block + l;
                T t, ex, ey;
                const T d = distance2(seg, x[c] - seg.x0, uy, t, ex, ey);
                const T gc = chain<T, KERNEL, COMPOSITE>(d, st, inv_temperature, p, c, sl, l);
                add_to_ends(acc, l, gc * ex, gc * ey, t);
              }
            }
            return;
          }
          near.compute(chords, runs, count, begin, end, x, py[row]);
          const T* D = near.d2.data();
          T *EX = near.ex.data(), *EY = near.ey.data();
          for (int64_t block = begin; block < end; block += kBlock) {
#pragma omp simd
            for (int64_t l = 0; l < kBlock; ++l) {
              const int64_t c = block + l;
              const T gc = chain<T, KERNEL, COMPOSITE>(D[c], st, inv_temperature, p, c, sl, l);
              EX[c] = gc * EX[c];  // now d loss / d closest point
              EY[c] = gc * EY[c];
            }
          }
          // Each pixel's share goes to the ends of its closest chord, run by run.
          const T *TT = near.t.data(), *CH = near.chord.data();
          for (int64_t k = 0; k < count; ++k) {
            const T index = T(runs[k].chord);
            T* acc = chord_lanes.data() + 4 * kBlock * runs[k].chord;
            for (int64_t block = runs[k].begin; block < runs[k].end; block += kBlock) {
#pragma omp simd
              for (int64_t l = 0; l < kBlock; ++l) {
                const int64_t c = block + l;
                const bool mine = CH[c] == index;
                add_to_ends(acc, l, mine ? EX[c] : T(0), mine ? EY[c] : T(0), TT[c]);
              }
            }
          }
        });
        // The lanes' sums, in double: a chord's b end is the next chord's a end.
        std::fill(point_sums.begin(), point_sums.end(), 0.0);
        for (int64_t k = 0; k < n_chords; ++k) {
          double* sums = point_sums.data() + 2 * chords.first_point[k];
          for (int64_t q = 0; q < 4; ++q)
            for (int64_t l = 0; l < kBlock; ++l) sums[q] += chord_lanes[(4 * k + q) * kBlock + l];
        }
        T* gp = grad_points + (b * n + i) * P * 2;
        for (int64_t j = 0; j < 2 * P; ++j) gp[j] = T(point_sums[j]);
        T* gs = grad_style + (b * n + i) * 5;
        for (int64_t q = 0; q < 5; ++q) {
          double sum = 0.0;
          for (int64_t l = 0; l < kBlock; ++l) sum += style_lanes[q * kBlock + l];
          gs[q] = T(sum);
        }
      }
    }
  }
}

template <typename T, int KERNEL>
auto forward_for(int composite) {
  return composite == COMPOSITE_SOFTOR ? forward<T, KERNEL, COMPOSITE_SOFTOR>
         : composite == COMPOSITE_MAX  ? forward<T, KERNEL, COMPOSITE_MAX>
                                       : forward<T, KERNEL, COMPOSITE_COLOUR>;
}

template <typename T, int KERNEL>
auto backward_for(int composite) {
  return composite == COMPOSITE_SOFTOR ? backward<T, KERNEL, COMPOSITE_SOFTOR>
         : composite == COMPOSITE_MAX  ? backward<T, KERNEL, COMPOSITE_MAX>
                                       : backward<T, KERNEL, COMPOSITE_COLOUR>;
}

template <typename T>
void forward_any(int kernel, int composite, const T* points, const T* style, int64_t batch,
                 int64_t n, int64_t P, const T* px, int64_t W, const T* py, int64_t H,
                 double sigma2, double cutoff_d2, double inv_temperature, int threads,
                 int invert, T* out, T* acc_a, T* acc_b) {
  auto f = kernel == KERNEL_EXP ? forward_for<T, KERNEL_EXP>(composite)
                                : forward_for<T, KERNEL_SIGMOID>(composite);
  f(points, style, batch, n, P, px, W, py, H, sigma2, cutoff_d2, T(inv_temperature),
    invert != 0, out, acc_a, acc_b, threads);
}

template <typename T>
void backward_any(int kernel, int composite, const T* points, const T* style, int64_t batch,
                  int64_t n, int64_t P, const T* px, int64_t W, const T* py, int64_t H,
                  double sigma2, double cutoff_d2, double inv_temperature, int threads,
                  int invert, const T* grad_ink, const T* acc_a, const T* acc_b,
                  T* grad_points, T* grad_style) {
  auto f = kernel == KERNEL_EXP ? backward_for<T, KERNEL_EXP>(composite)
                                : backward_for<T, KERNEL_SIGMOID>(composite);
  f(points, style, batch, n, P, px, W, py, H, sigma2, cutoff_d2, T(inv_temperature),
    invert != 0, grad_ink, acc_a, acc_b, grad_points, grad_style, threads);
}

}  // namespace

// C entry points, one pair per dtype, for contiguous polylines [batch, n, P, 2], styles
// [batch, n, 5] and [batch, (3,) H, W] planes; sketches are shared out over `threads` OpenMP
// threads.
extern "C" {
void raster_forward_f32(int kernel, int composite, const float* points, const float* style,
                        int64_t batch, int64_t n, int64_t P, const float* px, int64_t W,
                        const float* py, int64_t H, double sigma2, double cutoff_d2,
                        double inv_temperature, int threads, int invert, float* out,
                        float* acc_a, float* acc_b) {
  forward_any(kernel, composite, points, style, batch, n, P, px, W, py, H, sigma2, cutoff_d2,
              inv_temperature, threads, invert, out, acc_a, acc_b);
}
void raster_forward_f64(int kernel, int composite, const double* points, const double* style,
                        int64_t batch, int64_t n, int64_t P, const double* px, int64_t W,
                        const double* py, int64_t H, double sigma2, double cutoff_d2,
                        double inv_temperature, int threads, int invert, double* out,
                        double* acc_a, double* acc_b) {
  forward_any(kernel, composite, points, style, batch, n, P, px, W, py, H, sigma2, cutoff_d2,
              inv_temperature, threads, invert, out, acc_a, acc_b);
}
void raster_backward_f32(int kernel, int composite, const float* points, const float* style,
                         int64_t batch, int64_t n, int64_t P, const float* px, int64_t W,
                         const float* py, int64_t H, double sigma2, double cutoff_d2,
                         double inv_temperature, int threads, int invert,
                         const float* grad_ink, const float* acc_a, const float* acc_b,
                         float* grad_points, float* grad_style) {
  backward_any(kernel, composite, points, style, batch, n, P, px, W, py, H, sigma2, cutoff_d2,
               inv_temperature, threads, invert, grad_ink, acc_a, acc_b, grad_points,
               grad_style);
}
void raster_backward_f64(int kernel, int composite, const double* points, const double* style,
                         int64_t batch, int64_t n, int64_t P, const double* px, int64_t W,
                         const double* py, int64_t H, double sigma2, double cutoff_d2,
                         double inv_temperature, int threads, int invert,
                         const double* grad_ink, const double* acc_a, const double* acc_b,
                         double* grad_points, double* grad_style) {
  backward_any(kernel, composite, points, style, batch, n, P, px, W, py, H, sigma2, cutoff_d2,
               inv_temperature, threads, invert, grad_ink, acc_a, acc_b, grad_points,
               grad_style);
}
}
"""

KERNEL_CODES = {"exp": 0, "sigmoid": 1}
COMPOSITE_CODES = {"softor": 0, "max": 1}
COMPOSITE_COLOUR = 2  # RGB over, whatever spec.composite says
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
        # 256-bit vectors: 8 floats, one kBlock, so a run is never all masked remainder.
        flags += ["-march=native", "-mprefer-vector-width=256"]
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


def _call(
    library: ctypes.CDLL, name: str, points: Tensor, style: Tensor, spec: tuple, *tail
) -> None:
    """Call kernel entry point `name` on polylines [B, n, P, 2] and styles [B, n, 5], over up
    to torch's CPU threads."""
    px, py = spec.px, spec.py
    suffix = "f64" if points.dtype == torch.float64 else "f32"
    composite = COMPOSITE_COLOUR if spec.colour else COMPOSITE_CODES[spec.composite]
    batch, n, n_points = points.shape[:3]
    work = batch * n * (px.numel() + py.numel())
    threads = max(1, min(torch.get_num_threads(), work // _WORK_PER_THREAD))
    getattr(library, f"{name}_{suffix}")(
        ctypes.c_int(KERNEL_CODES[spec.kernel]),
        ctypes.c_int(composite),
        ctypes.c_void_p(points.data_ptr()),
        ctypes.c_void_p(style.data_ptr()),
        ctypes.c_int64(batch),
        ctypes.c_int64(n),
        ctypes.c_int64(n_points),
        ctypes.c_void_p(px.data_ptr()),
        ctypes.c_int64(px.numel()),
        ctypes.c_void_p(py.data_ptr()),
        ctypes.c_int64(py.numel()),
        ctypes.c_double(spec.sigma2),
        ctypes.c_double(spec.cutoff_d2),
        ctypes.c_double(spec.inv_temperature),
        ctypes.c_int(threads),
        *(
            ctypes.c_void_p(t.data_ptr()) if isinstance(t, Tensor) else ctypes.c_int(t)
            for t in tail
        ),
    )


def _check(points: Tensor, style: Tensor, *planes: Tensor) -> None:
    """The layout the C++ code reads; anything else would be read as garbage."""
    if points.ndim != 4 or points.shape[-1] != 2 or points.shape[2] < 2:
        raise ValueError(f"points must be [B, n, P >= 2, 2], got {tuple(points.shape)}")
    if style.shape != (*points.shape[:2], 5):
        raise ValueError(f"style must be [B, n, 5], got {tuple(style.shape)}")
    for t in (points, style, *planes):
        if t.device.type != "cpu" or t.dtype != points.dtype or not t.is_contiguous():
            raise ValueError("the CPU kernel needs contiguous CPU tensors of one dtype")


def forward(library: ctypes.CDLL, points: Tensor, style: Tensor, spec: tuple, invert: bool):
    """Render contiguous CPU polylines [B, n, P, 2] with styles [B, n, 5] (width, opacity, r,
    g, b); returns (sketch [B, H, W], or [B, 3, H, W] when spec.colour, aggregate A,
    aggregate B).

    The aggregates are [B, H, W'] with W' the width rounded up to a multiple of 8 (_BLOCK).
    """
    _check(points, style)
    batch, height, width = points.shape[0], spec.py.numel(), spec.px.numel()
    out = points.new_empty(batch, *((3,) if spec.colour else ()), height, width)
    stride = -(-width // _BLOCK) * _BLOCK
    acc_a, acc_b = (points.new_empty(batch, height, stride) for _ in range(2))
    _call(library, "raster_forward", points, style, spec, int(invert), out, acc_a, acc_b)
    return out, acc_a, acc_b


def backward(
    library: ctypes.CDLL,
    points: Tensor,
    style: Tensor,
    spec: tuple,
    invert: bool,
    grad_ink: Tensor,
    acc_a: Tensor,
    acc_b: Tensor,
) -> tuple[Tensor, Tensor]:
    """(gradient wrt points [B, n, P, 2], gradient wrt style [B, n, 5]), given the gradient
    wrt the (non-inverted) greyscale ink or the RGB sketch, and forward's aggregates."""
    _check(points, style, grad_ink, acc_a, acc_b)
    grad_points, grad_style = torch.empty_like(points), torch.empty_like(style)
    _call(
        library,
        "raster_backward",
        points,
        style,
        spec,
        int(invert),
        grad_ink,
        acc_a,
        acc_b,
        grad_points,
        grad_style,
    )
    return grad_points, grad_style
