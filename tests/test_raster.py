"""Tests for sketchenv.raster: exact values, gradients, conventions and input checks."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from sketchenv import _raster_cpu
from sketchenv._raster_reference import naive_render_strokes
from sketchenv.raster import COMPOSITES, KERNELS, MAX_TEMPERATURE, render_strokes, to_rgb

MODES = [(k, c) for k in KERNELS for c in COMPOSITES]


@pytest.fixture(params=["kernel", "torch"], autouse=True)
def backend(request, monkeypatch):
    """Run every test on the compiled CPU kernel and on the chunked PyTorch path."""
    if request.param == "kernel" and _raster_cpu.load()[0] is None:
        pytest.skip("compiled CPU kernel unavailable (no C++ compiler)")
    monkeypatch.setenv("SKETCHENV_RASTER", request.param)  # "kernel" raises if not used
    return request.param


def brute_force(strokes, height, width, sigma2, kernel, composite, invert):
    """Per-pixel Python loops over a list of (x0, y0, x1, y1) strokes."""
    image = []
    for row in range(height):
        py = -1 + 2 * row / (height - 1)
        line = []
        for col in range(width):
            px = -1 + 2 * col / (width - 1)
            inks = []
            for x0, y0, x1, y1 in strokes:
                dx, dy = x1 - x0, y1 - y0
                length2 = dx * dx + dy * dy
                t = 0.0 if length2 == 0 else ((px - x0) * dx + (py - y0) * dy) / length2
                t = min(max(t, 0.0), 1.0)
                d2 = (px - x0 - t * dx) ** 2 + (py - y0 - t * dy) ** 2
                z = d2 / sigma2
                inks.append(math.exp(-z) if kernel == "exp" else 2 / (1 + math.exp(z)))
            if composite == "max":
                weights = [math.exp(r / MAX_TEMPERATURE) for r in inks]
                ink = sum(w * r for w, r in zip(weights, inks, strict=True)) / sum(weights)
            else:
                ink = 0.0
                for r in inks:  # alpha-over in stroke order == soft-or
                    ink = r + (1 - r) * ink
            line.append(1 - ink if invert else ink)
        image.append(line)
    return torch.tensor(image, dtype=torch.float64)


def random_strokes(*shape, dtype=torch.float32, seed=0, spread=1.2):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, 4, generator=generator, dtype=dtype) * 2 - 1) * spread


@pytest.mark.parametrize(("kernel", "composite"), MODES)
@pytest.mark.parametrize("invert", [True, False])
def test_matches_brute_force_loops(kernel, composite, invert):
    strokes = [
        (-0.8, -0.5, 0.6, 0.7),  # diagonal
        (0.3, 0.3, 0.3, 0.3),  # zero length: a dot
        (-1.5, 0.9, 2.0, 1.4),  # mostly off the canvas
        (0.5, -0.5, -0.25, -0.5),  # horizontal, right to left
    ]
    sigma2 = 0.03
    expected = brute_force(strokes, 5, 7, sigma2, kernel, composite, invert)
    got = render_strokes(
        torch.tensor(strokes, dtype=torch.float64),
        (5, 7),
        sigma2=sigma2,
        kernel=kernel,
        composite=composite,
        invert=invert,
    )
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kernel", "composite"), MODES)
def test_gradcheck_float64(kernel, composite):
    strokes = random_strokes(2, 3, dtype=torch.float64, seed=1).requires_grad_()
    strokes.data[0, 1, 2:] = strokes.data[0, 1, :2]  # one zero-length stroke

    def render(s):
        return render_strokes(s, (6, 9), sigma2=0.08, kernel=kernel, composite=composite)

    assert torch.autograd.gradcheck(render, (strokes,))


@pytest.mark.parametrize(("kernel", "composite"), MODES)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_agrees_with_naive_reference_float32(kernel, composite, batch_shape):
    strokes = random_strokes(*batch_shape, 6, seed=2).requires_grad_()
    options = dict(sigma2=5e-3, kernel=kernel, composite=composite)
    ours = render_strokes(strokes, (20, 23), **options)
    naive = naive_render_strokes(strokes, (20, 23), **options)
    assert ours.shape == (*batch_shape, 20, 23)
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-5)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), strokes)
    (grad_naive,) = torch.autograd.grad((naive * weights).sum(), strokes)
    scale = grad_naive.abs().max()
    torch.testing.assert_close(grad_ours / scale, grad_naive / scale, rtol=1e-5, atol=1e-5)


def test_paper_setting_agrees_with_reference():
    strokes = random_strokes(4, 20, seed=4, spread=1.0).requires_grad_()
    ours = render_strokes(strokes, 96)
    naive = naive_render_strokes(strokes, (96, 96))
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-5)
    (grad_ours,) = torch.autograd.grad(ours.sum(), strokes)
    (grad_naive,) = torch.autograd.grad(naive.sum(), strokes)
    scale = grad_naive.abs().max()
    torch.testing.assert_close(grad_ours / scale, grad_naive / scale, rtol=1e-5, atol=1e-5)


def test_over_is_alpha_over_in_stroke_order():
    strokes = random_strokes(2, 5, dtype=torch.float64, seed=5)
    over = render_strokes(strokes, 12, sigma2=0.02, composite="over", invert=False)
    softor = render_strokes(strokes, 12, sigma2=0.02, composite="softor", invert=False)
    literal = naive_render_strokes(strokes, (12, 12), sigma2=0.02, composite="over", invert=False)
    torch.testing.assert_close(over, literal, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(over, softor, rtol=1e-12, atol=1e-12)


def test_max_is_bounded_by_hard_max():
    strokes = random_strokes(3, 6, dtype=torch.float64, seed=6)
    smooth = render_strokes(strokes, 16, sigma2=0.01, composite="max", invert=False)
    single = torch.stack(
        [render_strokes(strokes[:, i : i + 1], 16, sigma2=0.01, invert=False) for i in range(6)]
    )
    hard = single.max(dim=0).values
    assert (smooth <= hard + 1e-12).all()
    # Where one stroke dominates, the smooth max is close to the hard max.
    dominant = hard > 0.9
    assert dominant.any()
    assert (hard[dominant] - smooth[dominant]).max() < 0.05


def test_coordinate_convention():
    horizontal_top = torch.tensor([[-1.0, -1.0, 1.0, -1.0]])
    sketch = render_strokes(horizontal_top, (8, 10))  # black on white
    assert torch.allclose(sketch[0], torch.zeros(10), atol=1e-6)  # top row is ink
    assert (sketch[-1] > 0.999).all()  # bottom row is paper
    vertical_left = torch.tensor([[-1.0, -1.0, -1.0, 1.0]])
    sketch = render_strokes(vertical_left, (8, 10), invert=False)
    assert torch.allclose(sketch[:, 0], torch.ones(8), atol=1e-6)
    assert (sketch[:, -1] < 1e-3).all()
    dot = torch.tensor([[1.0, -1.0, 1.0, -1.0]])  # x = +1 (right), y = -1 (top)
    sketch = render_strokes(dot, (8, 10), invert=False)
    assert sketch.argmax().item() == 9  # row 0, last column


def test_zero_length_stroke_is_a_dot_with_symmetric_gradient():
    dot = torch.tensor([[0.2, -0.4, 0.2, -0.4]], dtype=torch.float64, requires_grad=True)
    sketch = render_strokes(dot, 9, sigma2=0.05, invert=False)
    px = torch.linspace(-1, 1, 9, dtype=torch.float64)
    d2 = (px[None, :] - 0.2) ** 2 + (px[:, None] + 0.4) ** 2
    torch.testing.assert_close(sketch, torch.exp(-d2 / 0.05))
    (grad,) = torch.autograd.grad((sketch * px[None, :]).sum(), dot)
    torch.testing.assert_close(grad[0, :2], grad[0, 2:])
    assert grad.abs().sum() > 0


def test_vanishingly_short_stroke_is_a_dot():
    strokes = torch.tensor([[0.0, 0.0, 1e-20, 0.0], [0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    sketch = render_strokes(strokes, 12)
    dots = render_strokes(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]), 12)
    torch.testing.assert_close(sketch, dots)
    sketch.sum().backward()
    assert torch.isfinite(strokes.grad).all()


def test_off_canvas_strokes():
    far = torch.tensor([[5.0, 5.0, 6.0, 7.0], [-3.0, 0.0, -3.0, 0.5]], requires_grad=True)
    sketch = render_strokes(far, 16)
    assert torch.equal(sketch, torch.ones(16, 16))
    sketch.sum().backward()
    assert torch.equal(far.grad, torch.zeros_like(far))
    # A stroke crossing the canvas from far outside is drawn where it passes.
    crossing = torch.tensor([[-5.0, 0.0, 5.0, 0.0]])
    sketch = render_strokes(crossing, (9, 9), invert=False)
    assert torch.allclose(sketch[4], torch.ones(9), atol=1e-6)


def test_dtypes_and_to_rgb():
    strokes = random_strokes(2, 4, seed=7)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        sketch = render_strokes(strokes.to(dtype), 12)
        assert sketch.dtype == dtype
        assert sketch.min() >= 0 and sketch.max() <= 1
    rgb = to_rgb(render_strokes(strokes, (12, 14)))
    assert rgb.shape == (2, 3, 12, 14)
    assert torch.equal(rgb[:, 0], rgb[:, 2])


def test_empty_batch_and_no_strokes():
    assert render_strokes(torch.zeros(0, 3, 4), 8).shape == (0, 8, 8)
    blank = render_strokes(torch.zeros(2, 0, 4), 8)
    assert torch.equal(blank, torch.ones(2, 8, 8))


@pytest.mark.parametrize(
    ("strokes", "kwargs", "error", "match"),
    [
        (torch.zeros(3, 5), {}, ValueError, r"\[\.\.\., n_strokes, 4\]"),
        (torch.zeros(4), {}, ValueError, r"n_strokes, 4"),
        (torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), {}, ValueError, "NaN or infinite"),
        (torch.tensor([[0.0, float("inf"), 0.0, 0.0]]), {}, ValueError, "NaN or infinite"),
        ([[0.0, 0.0, 1.0, 1.0]], {}, TypeError, "torch.Tensor"),
        (torch.zeros(2, 4, dtype=torch.int64), {}, TypeError, "floating-point"),
        (torch.zeros(2, 4), {"sigma2": 0.0}, ValueError, "sigma2"),
        (torch.zeros(2, 4), {"sigma2": -1e-3}, ValueError, "sigma2"),
        (torch.zeros(2, 4), {"sigma2": "big"}, TypeError, "sigma2"),
        (torch.zeros(2, 4), {"image_size": 1}, ValueError, "image_size"),
        (torch.zeros(2, 4), {"image_size": (8, 1)}, ValueError, "image_size"),
        (torch.zeros(2, 4), {"image_size": 8.0}, TypeError, "image_size"),
        (torch.zeros(2, 4), {"kernel": "gauss"}, ValueError, "kernel"),
        (torch.zeros(2, 4), {"composite": "sum"}, ValueError, "composite"),
    ],
)
def test_bad_input_errors(strokes, kwargs, error, match):
    kwargs = {"image_size": 8, **kwargs}
    with pytest.raises(error, match=match):
        render_strokes(strokes, kwargs.pop("image_size"), **kwargs)


def test_kernel_path_is_used_when_available(backend, monkeypatch):
    from sketchenv import raster

    monkeypatch.setenv("SKETCHENV_RASTER", "auto")
    assert raster._use_cpu_kernel(torch.device("cpu")) == (_raster_cpu.load()[0] is not None)
    monkeypatch.setenv("SKETCHENV_RASTER", "fast")
    with pytest.raises(ValueError, match="SKETCHENV_RASTER"):
        render_strokes(torch.zeros(1, 4), 8)


def test_same_result_for_any_thread_count(backend):
    if backend != "kernel":
        pytest.skip("PyTorch's own reductions may depend on the thread count")
    strokes = random_strokes(40, 20, seed=9)  # enough work for the kernel to use threads
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            leaf = strokes.clone().requires_grad_()
            sketch = render_strokes(leaf, 96)
            (grad,) = torch.autograd.grad(sketch.sum(), leaf)
            results.append((sketch, grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("sigma2", [1e-4, 0.5, 4.0])
def test_thickness_from_thin_to_wider_than_the_canvas(sigma2):
    strokes = random_strokes(3, 4, seed=8)
    for composite in COMPOSITES:
        ours = render_strokes(strokes, (17, 13), sigma2=sigma2, composite=composite)
        naive = naive_render_strokes(strokes, (17, 13), sigma2=sigma2, composite=composite)
        torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compiler", ["/nonexistent/c++", "false"])
def test_falls_back_to_pytorch_without_a_working_compiler(
    backend, compiler, monkeypatch, tmp_path, caplog
):
    from sketchenv import raster

    if backend == "torch":
        pytest.skip("exercises the kernel loader")
    monkeypatch.setenv("SKETCHENV_RASTER", "auto")
    monkeypatch.setenv("CXX", compiler)
    monkeypatch.setenv("SKETCHENV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_raster_cpu, "_library", None)
    monkeypatch.setattr(_raster_cpu, "_load_error", None)
    monkeypatch.setattr(raster, "_logged", set())
    strokes = random_strokes(2, 3, seed=10)
    with caplog.at_level(logging.INFO, logger="sketchenv.raster"):
        sketch = render_strokes(strokes, 12)
        render_strokes(strokes, 12)
    messages = [r.getMessage() for r in caplog.records if r.name == "sketchenv.raster"]
    assert len(messages) == 1 and "PyTorch path" in messages[0]
    assert caplog.records[0].levelno == logging.WARNING
    torch.testing.assert_close(sketch, naive_render_strokes(strokes, (12, 12)), atol=1e-5, rtol=0)
    monkeypatch.setenv("SKETCHENV_RASTER", "kernel")
    with pytest.raises(RuntimeError, match="unavailable"):
        render_strokes(strokes, 12)


def test_a_damaged_cached_kernel_is_rebuilt_not_loaded(backend, monkeypatch, tmp_path):
    if backend == "torch":
        pytest.skip("exercises the kernel loader")
    built = _raster_cpu._build()  # the machine's cached build (the backend fixture made it)
    assert _raster_cpu._verified(built)
    whole = built.read_bytes()
    monkeypatch.setenv("SKETCHENV_CACHE_DIR", str(tmp_path))
    library = tmp_path / built.name
    _raster_cpu._digest_path(library).write_bytes(_raster_cpu._digest_path(built).read_bytes())
    library.write_bytes(whole[: len(whole) // 3])  # truncated: loading it would SIGBUS
    assert not _raster_cpu._verified(library)
    monkeypatch.setattr(_raster_cpu, "_library", None)
    monkeypatch.setattr(_raster_cpu, "_load_error", None)
    loaded, note = _raster_cpu.load()
    assert loaded is not None, note
    assert _raster_cpu._verified(library) and len(library.read_bytes()) == len(whole)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".sha256", ".so"]  # no leftovers


def test_double_backward_is_refused():
    strokes = random_strokes(1, 2, seed=11).requires_grad_()
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(render_strokes(strokes, 8).sum(), strokes, create_graph=True)


@pytest.mark.slow
def test_peak_memory_grows_with_sketches_times_pixels_not_strokes(backend):
    """The README's memory claim, measured as benchmarks/raster.py does (resident-set rise
    of one forward + backward in a fresh process, which inherits the backend): the kernel
    needs a few floats per sketch pixel (measured 4), the same for 20 or 80 strokes and
    twice as much for twice the sketches; the PyTorch path, chunked, stays below one dense
    sketches x strokes x pixels tensor (the naive reference keeps several)."""
    from benchmarks.raster import measure

    def peak(sketches: int, strokes: int) -> float:
        return measure("ours", sketches, strokes, 96, repeats=1, threads=1)["peak_mib"]

    per_sketch_pixel = 100 * 96 * 96 * 4 / 2**20  # MiB of one float per pixel of 100 sketches
    if backend == "kernel":
        few, many, more = peak(100, 20), peak(100, 80), peak(200, 20)
        assert few < 8 * per_sketch_pixel and many < 1.2 * few + 1
        assert 1.6 * few < more < 2.4 * few + 1
    else:
        assert peak(100, 80) < 80 * per_sketch_pixel  # one float per (sketch, stroke, pixel)
