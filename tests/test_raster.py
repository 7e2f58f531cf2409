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
    with pytest.raises(RuntimeError) as err:
        torch.autograd.grad(render_strokes(strokes, 8).sum(), strokes, create_graph=True)
    assert str(err.value) == (
        "render_strokes has first-order gradients only; double backward "
        "(create_graph=True, e.g. gradient penalties) is not supported"
    )


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


# ----- exact messages, boundaries and the paths chosen (found by mutation testing) -------


def test_input_messages_are_exact():
    def message(error, *args, **kwargs):
        with pytest.raises(error) as caught:
            render_strokes(*args, **kwargs)
        return str(caught.value)

    strokes = torch.zeros(1, 4)
    assert message(TypeError, [[0.0, 0.0, 1.0, 1.0]], 8) == (
        "strokes must be a torch.Tensor, got list"
    )
    assert message(ValueError, torch.zeros(1, 4, device="meta"), 8) == (
        "strokes are on the meta device, which holds no values"
    )
    assert message(ValueError, torch.zeros(1, 5), 8) == (
        "strokes must have shape [..., n_strokes, 4] for line strokes (x0, y0, x1, y1), got (1, 5)"
    )
    assert message(TypeError, torch.zeros(1, 4, dtype=torch.int32), 8) == (
        "strokes must be a floating-point tensor, got dtype torch.int32; "
        "convert with strokes.float()"
    )
    assert message(ValueError, torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), 8) == (
        "strokes contain NaN or infinite values"
    )
    assert message(ValueError, torch.tensor([[0.0, 0.0, 2e6, 0.0]]), 8) == (
        "stroke coordinates must lie within ±1e+06 (the canvas is [-1, 1]), got 2e+06"
    )
    assert message(TypeError, strokes, 8, sigma2="big") == "sigma2 must be a real number, got str"
    assert message(TypeError, strokes, 8, invert=1) == "invert must be a bool, got int"
    for size in [(2.5, 3), (True, 3)]:
        assert message(TypeError, strokes, size) == (
            f"image_size must be an int or a pair of ints (H, W), got {size!r}"
        )
    assert message(ValueError, strokes, (8, 1)) == (
        "image_size must be at least 2 pixels on each side, got (8, 1)"
    )


def test_smallest_canvas_and_largest_coordinates_are_accepted():
    assert render_strokes(torch.zeros(1, 4), 2).shape == (2, 2)
    assert render_strokes(torch.zeros(1, 4), (2, 3)).shape == (2, 3)
    far = torch.tensor([[-1e6, 0.0, 1e6, 0.0]])  # exactly the limit: a line across the canvas
    assert render_strokes(far, 9, invert=False)[4].min() > 0.99


def test_to_rgb_of_one_sketch_and_its_messages():
    sketch = torch.rand(5, 7)
    rgb = to_rgb(sketch)
    assert rgb.shape == (3, 5, 7) and all(torch.equal(c, sketch) for c in rgb)
    with pytest.raises(TypeError) as err:
        to_rgb([[0.0]])
    assert str(err.value) == "sketch must be a torch.Tensor, got list"
    with pytest.raises(ValueError) as err:
        to_rgb(torch.zeros(5))
    assert str(err.value) == "sketch must have shape [..., H, W], got (5,)"


@pytest.mark.parametrize(("kernel", "composite"), MODES)
def test_uninverted_gradient_is_minus_the_inverted_one(kernel, composite):
    strokes = random_strokes(2, 3, seed=12)
    weights = torch.rand(2, 10, 9, generator=torch.Generator().manual_seed(0))
    grads = []
    for invert in (True, False):
        leaf = strokes.clone().requires_grad_()
        sketch = render_strokes(leaf, (10, 9), kernel=kernel, composite=composite, invert=invert)
        grads.append(torch.autograd.grad((sketch * weights).sum(), leaf)[0])
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], -grads[0])


def test_half_and_single_precision_are_computed_in_float32_on_the_chosen_path(backend, monkeypatch):
    from sketchenv import raster

    seen = []
    apply = raster._Raster.apply

    def recording_apply(points, style, spec, invert, use_kernel):
        seen.append((points.dtype, style.dtype, spec.px.dtype, use_kernel))
        return apply(points, style, spec, invert, use_kernel)

    monkeypatch.setattr(raster._Raster, "apply", recording_apply)
    strokes = random_strokes(2, 3, seed=13)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        render_strokes(strokes.to(dtype), 8)
    single = torch.float32
    kernel = backend == "kernel"
    double = torch.float64
    assert seen == [(single, single, single, kernel)] * 3 + [(double, double, double, kernel)]


def test_the_path_follows_sketchenv_raster_and_is_logged_once(backend, monkeypatch, caplog):
    from sketchenv import raster

    if backend == "torch":
        pytest.skip("needs the compiled kernel")
    monkeypatch.setattr(raster, "_logged", set())
    monkeypatch.delenv("SKETCHENV_RASTER")  # unset means auto
    cpu, meta = torch.device("cpu"), torch.device("meta")
    with caplog.at_level(logging.INFO, logger="sketchenv.raster"):
        assert raster._use_cpu_kernel(cpu) is True
        assert raster._use_cpu_kernel(cpu) is True
        assert raster._use_cpu_kernel(meta) is False  # any other device: the PyTorch path
        monkeypatch.setenv("SKETCHENV_RASTER", "torch")
        assert raster._use_cpu_kernel(cpu) is False
        monkeypatch.setenv("SKETCHENV_RASTER", "kernel")
        assert raster._use_cpu_kernel(meta) is False
    assert [r.getMessage() for r in caplog.records if r.name == "sketchenv.raster"] == [
        "rasterising on cpu with the compiled C++ CPU kernel",
        "rasterising on meta with the chunked PyTorch path",
        "rasterising on cpu with the chunked PyTorch path",
    ]


def test_cutoff_distance_by_hand_and_the_pixel_grid_on_the_strokes_device():
    from sketchenv.raster import _cutoff_d2, _spec

    # exp: exp(-z) = eps/4, so z = log(4/eps); sigmoid: 2 sigmoid(-z) = eps/4, so
    # 1 + e^z = 8/eps, z = log(8/eps - 1). float32 eps = 2^-23, float64 eps = 2^-52.
    for dtype, eps in ((torch.float32, 2.0**-23), (torch.float64, 2.0**-52)):
        exp_z, sigmoid_z = math.log(4 / eps), math.log(8 / eps - 1)
        assert _cutoff_d2(0.01, "exp", dtype) == pytest.approx(0.01 * exp_z, rel=1e-12)
        assert _cutoff_d2(0.01, "sigmoid", dtype) == pytest.approx(0.01 * sigmoid_z, rel=1e-12)
    assert _cutoff_d2(5e-4, "exp", torch.float32) == pytest.approx(5e-4 * 17.3287, rel=1e-5)
    meta = torch.device("meta")
    px, py, sigma2, cutoff, kernel, composite, inv_t, colour = _spec(
        3, 5, 0.01, "exp", "over", torch.float64, meta
    )
    assert (px.shape, py.shape, px.device, py.device) == ((5,), (3,), meta, meta)
    assert px.dtype == py.dtype == torch.float64
    assert (sigma2, kernel, composite, inv_t) == (0.01, "exp", "softor", 1 / MAX_TEMPERATURE)
    assert colour is False  # render_strokes switches it on for coloured formats
    assert cutoff == pytest.approx(0.01 * math.log(4 / 2.0**-52), rel=1e-12)
    assert _spec(3, 5, 0.01, "sigmoid", "max", torch.float32, meta)[3:6] == (
        pytest.approx(0.01 * math.log(8 / 2.0**-23 - 1), rel=1e-12),
        "sigmoid",
        "max",
    )


@pytest.mark.parametrize(
    ("n_sketches", "n_strokes", "n_pixels", "device", "bound"),
    [
        (7, 20, 96 * 96, "cpu", 1 << 20),
        (3, 20, 512 * 512, "cpu", 1 << 20),  # 4 strokes per chunk, one sketch
        (5, 3, 1 << 21, "cpu", 1 << 21),  # one stroke is already more than the bound
        (300, 1, 16, "cpu", 1 << 20),
        (9, 50, 64 * 64, "cuda", 1 << 22),
        (9, 50, 256 * 256, "meta", 1 << 22),  # a device without its own size
        (4, 0, 64, "cpu", 1 << 20),
    ],
)
def test_dense_chunks_tile_all_work_once_within_their_bound(
    n_sketches, n_strokes, n_pixels, device, bound
):
    from sketchenv.raster import _chunks

    covered = torch.zeros(n_sketches, n_strokes, dtype=torch.int64)
    largest = 0
    for sk, st in _chunks(n_sketches, n_strokes, n_pixels, torch.device(device)):
        block = covered[sk, st]
        assert block.numel() > 0 or n_strokes == 0
        block += 1
        largest = max(largest, block.numel() * n_pixels)
    assert torch.equal(covered, torch.ones_like(covered))
    assert largest <= bound
    # and not cut much finer than it must be: at least half the bound, or all the work
    assert largest >= min(bound // 2, n_sketches * n_strokes * n_pixels)


def test_dense_path_gives_the_same_sketch_and_gradient_in_one_stroke_chunks(backend, monkeypatch):
    from sketchenv import raster

    if backend == "kernel":
        pytest.skip("exercises the dense PyTorch path")
    strokes = random_strokes(3, 5, seed=14)
    strokes[:, 0] = torch.tensor([-0.5, 0.0, 0.5, 0.0])  # through pixel centres: ink exactly 1
    weights = torch.rand(3, 11, 9, generator=torch.Generator().manual_seed(0))
    results = {}
    for name, elements in (("whole", 1 << 20), ("per stroke", 11 * 9)):
        monkeypatch.setitem(raster._CHUNK_ELEMENTS, "cpu", elements)
        for composite in ("softor", "max"):
            leaf = strokes.clone().requires_grad_()
            sketch = render_strokes(leaf, (11, 9), composite=composite)
            grad = torch.autograd.grad((sketch * weights).sum(), leaf)[0]
            results[name, composite] = sketch, grad
    for composite in ("softor", "max"):
        for whole, split in zip(
            results["whole", composite], results["per stroke", composite], strict=True
        ):
            torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)


def faulty_kernel(monkeypatch, out_error=None, grad_error=None):
    """Make the compiled kernel's results wrong: ``out_error(points, spec, out)`` returns what
    forward should have returned instead, ``grad_error(points, spec, (grad_points,
    grad_style))`` what backward should have."""
    forward, backward = _raster_cpu.forward, _raster_cpu.backward

    def wrong_forward(library, points, style, spec, invert):
        out, acc_a, acc_b = forward(library, points, style, spec, invert)
        return (out_error or (lambda *a: a[2]))(points, spec, out), acc_a, acc_b

    def wrong_backward(library, points, style, spec, *rest):
        grads = backward(library, points, style, spec, *rest)
        return (grad_error or (lambda *a: a[2]))(points, spec, grads)

    monkeypatch.setattr(_raster_cpu, "forward", wrong_forward)
    monkeypatch.setattr(_raster_cpu, "backward", wrong_backward)


def has_dot(points):
    """Whether some stroke's first chord has zero length (the self-test's lines have one)."""
    return bool((points[:, :, 0] == points[:, :, 1]).all(-1).any())


def _self_test_chords() -> int:
    """Chords of the self-test's curves in float32 (the verdict names them)."""
    from sketchenv import raster

    cases = raster._self_test_strokes(torch.Generator().manual_seed(0), torch.float32)
    return cases[1][0].shape[-2] - 1


def _both(scale_points, scale_style):
    return lambda p, spec, g: (scale_points(g[0]), scale_style(g[1]))


def _keep(x):
    return x


def _scaled_columns(columns, factor):
    def scale(g):
        g = g.clone()
        g[..., columns] *= factor
        return g

    return scale


SELF_TEST_FAULTS = {  # name: (out_error, grad_error, the self-test's verdict; CHORDS = curves)
    "ink off by 1e-3": (lambda p, spec, x: x + 1e-3, None, "exp, softor, 1 chords, torch.float32"),
    "gradient off by 0.1 %": (
        None,
        _both(lambda g: g * 1.001, _keep),
        "exp, softor, 1 chords, torch.float32",
    ),
    "width gradient off by 0.1 %": (
        None,
        _both(_keep, _scaled_columns(0, 1.001)),
        "exp, softor, 1 chords, torch.float32",
    ),
    "opacity gradient off by 0.1 %": (
        None,
        _both(_keep, _scaled_columns(1, 1.001)),
        "exp, softor, 1 chords, torch.float32",
    ),
    "colour gradient off by 0.1 %": (
        None,
        _both(_keep, _scaled_columns(slice(2, 5), 1.001)),
        "exp, colour, CHORDS chords, torch.float32",
    ),
    "float64 ink off by 1e-8": (
        lambda p, spec, x: x + 1e-8 if x.dtype == torch.float64 else x,
        None,
        "exp, softor, 1 chords, torch.float64",
    ),
    "smooth max wrong": (
        lambda p, spec, x: x + 1e-3 * (spec.composite == "max"),
        None,
        "exp, max, 1 chords, torch.float32",
    ),
    "dots wrong": (
        lambda p, spec, x: x + 1e-3 * has_dot(p),
        None,
        "exp, softor, 1 chords, torch.float32",
    ),
    "curves wrong": (
        lambda p, spec, x: x + 1e-3 * (p.shape[2] > 2),
        None,
        "exp, softor, CHORDS chords, torch.float32",
    ),
    "colour wrong": (
        lambda p, spec, x: x + 1e-3 * spec.colour,
        None,
        "exp, colour, CHORDS chords, torch.float32",
    ),
    "ink and gradient within float32 rounding (1.5e-4 relative)": (
        lambda p, spec, x: x * (1 + 1.5e-4 if x.dtype == torch.float32 else 1 + 1.5e-10),
        lambda p, spec, g: tuple(
            t * (1 + 1.5e-4 if t.dtype == torch.float32 else 1 + 1.5e-10) for t in g
        ),
        None,
    ),
}


@pytest.mark.parametrize("fault", list(SELF_TEST_FAULTS))
def test_kernel_self_test_refuses_a_wrong_kernel_and_passes_a_right_one(
    backend, monkeypatch, fault
):
    from sketchenv import raster

    if backend == "torch":
        pytest.skip("needs the compiled kernel")
    out_error, grad_error, verdict = SELF_TEST_FAULTS[fault]
    faulty_kernel(monkeypatch, out_error, grad_error)
    monkeypatch.setattr(raster, "_self_test", [])
    verdict = verdict and verdict.replace("CHORDS", str(_self_test_chords()))
    expected = verdict and f"compiled CPU kernel disagrees with PyTorch ({verdict})"
    assert raster._kernel_self_test_failure() == expected
    assert raster._self_test == [expected]  # once per process
    monkeypatch.setenv("SKETCHENV_RASTER", "auto")
    assert raster._use_cpu_kernel(torch.device("cpu")) is (expected is None)


# ----- stroke formats: curves, width, opacity and colour on both paths ---------------------

PRIMITIVES = ("line", "quadratic", "cubic")
OPTIONS = ("width", "opacity", "colour")


def format_strokes(stroke_format, *batch, seed=0, dtype=torch.float64, spread=1.0):
    """Random strokes of a format: control points in [-spread, spread], widths in [0.5, 2],
    opacities and colours inside (0, 1) (away from the bounds gradcheck would cross)."""
    from sketchenv.strokes import StrokeFormat

    stroke_format = StrokeFormat.parse(stroke_format)
    generator = torch.Generator().manual_seed(seed)
    strokes = torch.rand(*batch, stroke_format.size, generator=generator, dtype=dtype)
    columns = stroke_format.columns
    points = 2 * stroke_format.n_points
    strokes[..., :points] = (2 * strokes[..., :points] - 1) * spread
    for i, name in enumerate(columns[points:], start=points):
        low, high = (0.5, 2.0) if name == "width" else (0.1, 0.9)
        strokes[..., i] = low + (high - low) * strokes[..., i]
    return strokes


def bezier(controls, t):
    """Points of a Bézier curve with control points [m, 2] at parameters t [S]."""
    degree = controls.shape[0] - 1
    basis = torch.stack(
        [math.comb(degree, j) * t**j * (1 - t) ** (degree - j) for j in range(degree + 1)], -1
    )
    return basis @ controls


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_curves_match_brute_force_sampling_within_the_flattening_bound(primitive):
    """Per pixel, the distance to 20,001 points on the exact curve (a Python loop over
    pixels); the rendered ink may differ only by what the polyline's tolerance and the
    sampling allow: |dk/dd| <= sqrt(2/e) / (σ w), times (tolerance + half the sample gap)."""
    from sketchenv.strokes import StrokeFormat, flattening_error

    stroke_format = StrokeFormat(primitive, width=True, opacity=True)
    controls = {
        "line": [[-0.8, -0.5], [0.6, 0.7]],
        "quadratic": [[-0.9, 0.8], [0.1, -1.4], [0.8, 0.6]],
        "cubic": [[-0.9, -0.2], [-0.3, 1.6], [0.4, -1.6], [0.9, 0.3]],
    }[primitive]
    height, width, sigma2, tolerance = 7, 9, 0.02, 0.01
    rows = []
    for stroke_width, opacity in ((1.3, 0.8), (0.6, 1.0)):
        rows.append([c for point in controls for c in point] + [stroke_width, opacity])
        controls = [[x * 0.7, -y * 0.6] for x, y in controls]  # a second, different stroke
    strokes = torch.tensor(rows, dtype=torch.float64)
    got = render_strokes(
        strokes,
        (height, width),
        sigma2=sigma2,
        invert=False,
        stroke_format=stroke_format,
        curve_tolerance=tolerance,
    )
    t = torch.linspace(0, 1, 20_001, dtype=torch.float64)
    curves = [bezier(stroke_format.points(s), t) for s in strokes]
    gaps = [float((c[1:] - c[:-1]).norm(dim=-1).max()) for c in curves]
    sigma = math.sqrt(sigma2)
    bound = 0.0
    expected = torch.zeros(height, width, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            p = torch.tensor([-1 + 2 * col / (width - 1), -1 + 2 * row / (height - 1)])
            ink = 0.0
            for s, curve in zip(strokes.tolist(), curves, strict=True):
                stroke_width, opacity = s[-2:]
                d2 = float(((curve - p) ** 2).sum(-1).min())
                r = opacity * math.exp(-d2 / (sigma2 * stroke_width**2))
                ink = r + (1 - r) * ink
            expected[row, col] = ink
    for s, gap in zip(strokes, gaps, strict=True):
        stroke_width = float(s[-2])
        # polyline keeps within the tolerance unless its 64 chords cap it, then within
        # flattening_error(points, 64)
        flattening = max(
            tolerance * sigma * stroke_width, float(flattening_error(stroke_format.points(s), 64))
        )
        bound += math.sqrt(2 / math.e) * (flattening + gap / 2) / (sigma * stroke_width)
    assert expected.max() > 0.5  # the strokes cross the canvas
    error = float((got - expected).abs().max())
    assert error <= bound, (error, bound)
    # and the comparison is sharp enough to see a curve drawn as its control polygon's chord
    if primitive != "line":
        straight = strokes.clone()
        straight[:, 2 : 2 * stroke_format.n_points - 2] = 0.0
        wrong = render_strokes(
            straight, (height, width), sigma2=sigma2, invert=False, stroke_format=stroke_format
        )
        assert float((wrong - expected).abs().max()) > 10 * bound


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("option", OPTIONS)
def test_gradcheck_float64_for_each_primitive_and_option(primitive, option):
    stroke_format = f"{primitive}+{option}"
    strokes = format_strokes(stroke_format, 1, 2, seed=20, spread=0.8).requires_grad_()
    composite = "over" if option == "colour" else "softor"

    def render(s):
        return render_strokes(
            s, (6, 7), sigma2=0.08, composite=composite, stroke_format=stroke_format
        )

    assert torch.autograd.gradcheck(render, (strokes,))


def _render_and_grad(strokes, weights, **options):
    leaf = strokes.clone().requires_grad_()
    sketch = render_strokes(leaf, (24, 26), **options)
    return sketch, torch.autograd.grad((sketch * weights).sum(), leaf)[0]


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("options", ["", "+width+opacity", "+colour", "+width+opacity+colour"])
@pytest.mark.parametrize(("kernel", "composite"), MODES)
def test_kernel_and_pytorch_paths_agree_for_every_format(
    backend, monkeypatch, primitive, options, kernel, composite
):
    if backend == "torch":
        pytest.skip("compares the two paths in one run")
    stroke_format = primitive + options
    if "colour" in options and composite == "max":
        pytest.skip("colour is composited over")
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        strokes = format_strokes(stroke_format, 3, 4, seed=21, dtype=dtype, spread=1.2)
        channels = (3,) if "colour" in options else ()
        weights = torch.randn(3, *channels, 24, 26, generator=torch.Generator().manual_seed(2))
        settings = dict(sigma2=5e-3, kernel=kernel, composite=composite)
        results = {}
        for path in ("kernel", "torch"):
            monkeypatch.setenv("SKETCHENV_RASTER", path)
            results[path] = _render_and_grad(
                strokes, weights.to(dtype), stroke_format=stroke_format, **settings
            )
        for got, want in zip(results["kernel"], results["torch"], strict=True):
            scale = float(want.detach().abs().max())
            assert scale > 0
            torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("primitive", ["quadratic", "cubic"])
def test_degenerate_curves_draw_a_dot_or_their_straight_line(primitive):
    from sketchenv.strokes import StrokeFormat

    m = StrokeFormat(primitive).n_points
    dot = torch.tensor([[0.2, -0.4] * m], dtype=torch.float64)
    as_dot = render_strokes(dot, (9, 11), sigma2=0.05, stroke_format=primitive)
    dot_line = render_strokes(dot[:, :4], (9, 11), sigma2=0.05)
    torch.testing.assert_close(as_dot, dot_line, rtol=0, atol=1e-15)
    a, b = torch.tensor([-0.7, 0.5], dtype=torch.float64), torch.tensor([0.8, -0.3]).double()
    inner = [0.3] if m == 3 else [0.15, 0.75]  # control points inside the segment
    points = [a, *(a + f * (b - a) for f in inner), b]
    curve = torch.cat(points)[None]
    line = torch.cat([a, b])[None]
    for sigma2 in (5e-4, 0.02):
        as_curve = render_strokes(curve, (40, 36), sigma2=sigma2, stroke_format=primitive)
        as_line = render_strokes(line, (40, 36), sigma2=sigma2)
        assert as_line.min() < 0.1  # the line is drawn
        torch.testing.assert_close(as_curve, as_line, rtol=0, atol=1e-12)


def _strokes_with(stroke_format, column, value):
    from sketchenv.strokes import StrokeFormat

    strokes = format_strokes(stroke_format, 2, 3, seed=22)
    strokes[1, 2, StrokeFormat.parse(stroke_format).columns.index(column)] = value
    return strokes


@pytest.mark.parametrize(
    ("stroke_format", "strokes", "kwargs", "error", "message"),
    [
        (
            "cubic",
            torch.zeros(2, 4),
            {},
            ValueError,
            "strokes must have shape [..., n_strokes, 8] for cubic strokes "
            "(x0, y0, x1, y1, x2, y2, x3, y3), got (2, 4)",
        ),
        (
            "quadratic+width",
            torch.zeros(2, 6),
            {},
            ValueError,
            "strokes must have shape [..., n_strokes, 7] for quadratic+width strokes "
            "(x0, y0, x1, y1, x2, y2, width), got (2, 6)",
        ),
        (
            "cubic+opacity",
            _strokes_with("cubic+opacity", "y2", float("nan")),
            {},
            ValueError,
            "strokes contain NaN or infinite values",
        ),
        (
            "line+width",
            _strokes_with("line+width", "width", 0.0),
            {},
            ValueError,
            "strokes: width must lie in [0.25, 4], found [0, ",
        ),
        (
            "line+width",
            _strokes_with("line+width", "width", -1.0),
            {},
            ValueError,
            "strokes: width must lie in [0.25, 4], found [-1, ",
        ),
        (
            "quadratic+width",
            _strokes_with("quadratic+width", "width", 4.5),
            {},
            ValueError,
            ("strokes: width must lie in [0.25, 4], found [0.", ", 4.5]"),
        ),
        (
            "cubic+opacity",
            _strokes_with("cubic+opacity", "opacity", 1.2),
            {},
            ValueError,
            ("strokes: opacity must lie in [0, 1], found [0.", ", 1.2]"),
        ),
        (
            "line+opacity",
            _strokes_with("line+opacity", "opacity", -0.1),
            {},
            ValueError,
            "strokes: opacity must lie in [0, 1], found [-0.1, ",
        ),
        (
            "line+colour",
            _strokes_with("line+colour", "g", 1.5),
            {},
            ValueError,
            ("strokes: colour must lie in [0, 1], found [0.", ", 1.5]"),
        ),
        (
            "cubic+colour",
            format_strokes("cubic+colour", 2, 3, seed=22),
            {"composite": "max"},
            ValueError,
            "coloured strokes are composited with 'over'; choose composite='over'",
        ),
    ],
)
def test_bad_stroke_parameters_get_clear_errors(stroke_format, strokes, kwargs, error, message):
    with pytest.raises(error) as caught:
        render_strokes(strokes, 8, stroke_format=stroke_format, **kwargs)
    prefix, found = message if isinstance(message, tuple) else (message, "")
    assert str(caught.value).startswith(prefix), str(caught.value)
    assert found in str(caught.value)  # the largest value found, when it is the bad one
    if "found" in prefix:  # the range found and a remedy; without the bad value it draws
        assert str(caught.value).endswith("; squash it (e.g. with a sigmoid) into that range")
        assert render_strokes(format_strokes(stroke_format, 2, 3, seed=22), 8,
                              stroke_format=stroke_format).shape[-2:] == (8, 8)  # fmt: skip


def test_kernel_visits_few_chords_per_row_and_pixels_it_skips_are_blank(backend):
    """A long curve with many chords and a single short one: the sketch of both together
    equals the soft-or of each alone (pixels between the strokes are untouched), and far
    from every chord the ink is exactly paper."""
    curve = torch.tensor([[-0.9, -0.9, 0.9, -0.9, -0.9, 0.9, 0.9, 0.9]], dtype=torch.float64)
    short = torch.tensor([[0.0, 0.0, 0.05, 0.0, 0.1, 0.02, 0.15, 0.0]], dtype=torch.float64)
    both = render_strokes(torch.cat([curve, short]), 64, stroke_format="cubic", invert=False)
    each = [render_strokes(s, 64, stroke_format="cubic", invert=False) for s in (curve, short)]
    torch.testing.assert_close(both, 1 - (1 - each[0]) * (1 - each[1]), rtol=0, atol=1e-14)
    assert both.max() > 0.99 and (both == 0).float().mean() > 0.5


def test_kernel_trims_chords_without_changing_any_closest_chord(backend):
    """The kernel only visits the pixels where each chord of a polyline can be the closest
    (its slab, the end caps and the wedges at its vertices). Polylines made to break a wrong
    trimming: acute and reflex turns, a U-turn, a closed loop, vertical and horizontal chords,
    points repeated mid-polyline; kernel and PyTorch paths agree on the sketch and on every
    gradient, in float64."""
    if backend == "torch":
        pytest.skip("compares the two paths in one run")
    from sketchenv import raster

    polylines = [
        [[-0.8, -0.8], [0.8, -0.7], [-0.7, -0.5], [0.7, 0.9], [-0.6, 0.1]],  # acute zig-zag
        [[-0.5, 0.6], [0.0, -0.6], [0.0, -0.6], [0.5, 0.6], [-0.5, 0.6]],  # repeat, closed
        [[0.0, -0.9], [0.0, 0.0], [0.6, 0.0], [0.6, 0.3], [0.0, 0.3]],  # axis-aligned U-turn
        [[-0.2, 0.0], [0.3, 0.05], [-0.19, 0.01], [0.29, 0.06], [0.29, 0.06]],  # back and forth
    ]
    generator = torch.Generator().manual_seed(3)
    wiggles = torch.rand(4, 5, 2, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    points = torch.stack([torch.tensor(polylines, dtype=torch.float64), wiggles])  # [2, 4, 5, 2]
    style = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64).repeat(2, 4, 1)
    style[1, :, 0] = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)  # cut-off radii
    for kernel, composite in MODES:
        spec = raster._spec(41, 37, 2e-3, kernel, composite, torch.float64, points.device)
        weights = torch.randn(2, 41, 37, generator=generator, dtype=torch.float64)
        kernel_run, torch_run = (
            raster._render_with_grad(points, style, spec, weights, use_kernel)
            for use_kernel in (True, False)
        )
        assert float(torch_run[0].detach().min()) < 0.05  # the polylines are drawn
        for got, want in zip(kernel_run, torch_run, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
