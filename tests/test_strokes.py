"""The stroke model: formats, their checks, polylines within their bound, SVG."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from sketchenv.strokes import (
    StrokeFormat,
    chord_counts,
    flattening_error,
    polyline,
    strokes_to_svg,
    strokes_used,
)


def test_formats_name_their_columns_and_round_trip_through_their_names():
    assert StrokeFormat().columns == ("x0", "y0", "x1", "y1")
    cubic = StrokeFormat.parse("cubic+width+opacity+colour")
    assert cubic == StrokeFormat("cubic", width=True, opacity=True, colour=True)
    assert cubic.columns == (
        "x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3", "width", "opacity", "r", "g", "b"
    )  # fmt: skip
    assert cubic.size == 13 and StrokeFormat("quadratic").size == 6
    for name in ("line", "quadratic+opacity", "cubic+width+colour"):
        assert str(StrokeFormat.parse(name)) == name
    low, high = StrokeFormat.parse("line+width+opacity").bounds()
    assert low.tolist() == [-1, -1, -1, -1, 0.25, 0] and high.tolist() == [1, 1, 1, 1, 4, 1]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "spline",
            "unknown stroke primitive 'spline'; choose one of ['line', 'quadratic', 'cubic']",
        ),
        ("line+thick", "bad stroke format 'line+thick': options after the primitive must be"),
        ("line+width+width", "bad stroke format 'line+width+width'"),
    ],
)
def test_bad_format_names_are_refused(name, message):
    with pytest.raises(ValueError) as err:
        StrokeFormat.parse(name)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (0, math.nan, "strokes contain NaN or infinite values"),
        (8, 0.0, "width must lie in [0.25, 4], found [0, 1]"),
        (8, -1.0, "width must lie in [0.25, 4], found [-1, 1]"),
        (9, 1.5, "opacity must lie in [0, 1], found [0.5, 1.5]"),
        (11, -0.2, "colour must lie in [0, 1], found [-0.2, 0.5]"),
    ],
)
def test_bad_stroke_values_get_errors_naming_the_option(column, value, message):
    strokes = torch.full((2, 3, 13), 0.5)
    strokes[..., 8] = 1.0
    strokes[1, 2, column] = value
    with pytest.raises(ValueError) as err:
        StrokeFormat.parse("cubic+width+opacity+colour").check(strokes)
    assert message in str(err.value)


def test_a_wrong_column_count_names_the_format_and_its_columns():
    with pytest.raises(ValueError) as err:
        StrokeFormat("quadratic").check(torch.zeros(5, 4))
    assert str(err.value) == (
        "strokes must have shape [..., n_strokes, 6] for quadratic strokes "
        "(x0, y0, x1, y1, x2, y2), got (5, 4)"
    )


def test_style_fills_in_the_defaults_of_options_that_are_off():
    strokes = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.3]])
    style = StrokeFormat("line", opacity=True).style(strokes)
    assert style.tolist() == [[1.0, pytest.approx(0.3), 0.0, 0.0, 0.0]]


def dense_curve(points: torch.Tensor, n: int = 20001) -> torch.Tensor:
    """Points on Bézier curves [..., m, 2] at n parameters, by de Casteljau."""
    t = torch.linspace(0, 1, n, dtype=points.dtype)[:, None]
    level = [p[..., None, :] for p in points.unbind(-2)]
    while len(level) > 1:
        level = [(1 - t) * a + t * b for a, b in itertools.pairwise(level)]
    return level[0]


@pytest.mark.parametrize("m", [3, 4])
def test_polylines_stay_within_the_tolerance_and_their_bound(m):
    generator = torch.Generator().manual_seed(0)
    controls = torch.rand(40, m, 2, generator=generator, dtype=torch.float64) * 2 - 1
    tolerance = 0.01
    points = polyline(controls, tolerance)
    curve = dense_curve(controls)  # [40, n, 2]
    # distance from each dense curve point to the polyline's chords
    a, b = points[:, None, :-1], points[:, None, 1:]
    p = curve[:, :, None]
    d = b - a
    t = (((p - a) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-300)).clamp(0, 1)
    gap = (p - a - t[..., None] * d).norm(dim=-1).amin(-1).amax(-1)  # [40]
    counts = chord_counts(controls, tolerance)  # [40, pieces]
    assert counts.shape == (40, {3: 1, 4: 4}[m])  # a quadratic's B'' is constant: one piece
    used = (points.diff(dim=1).norm(dim=-1) > 0).sum(-1)  # chords each curve really uses
    assert (used == counts.sum(-1)).all()
    bound = flattening_error(controls, counts)
    assert (gap <= bound + 1e-12).all() and (bound <= tolerance).all()
    assert (gap / bound).median() > 0.2  # and usually not loose (it is exact along B'')
    assert points.shape[1] <= 65 and (points[:, 0] == controls[:, 0]).all()
    assert torch.allclose(points[:, -1], controls[:, -1])


def test_a_cubic_gets_its_chords_where_it_bends():
    """x = t along this cubic (its x control points are evenly spaced), so the polyline's x
    are its parameters: equally spaced within each quarter, densest where y bends most (the
    end), and fewer in all than equal-parameter chords would need for the same bound."""
    controls = torch.tensor([[[0.0, 0.0], [1 / 3, 0.0], [2 / 3, 0.0], [1.0, 0.8]]]).double()
    tolerance = 1e-3
    counts = chord_counts(controls, tolerance)[0]
    t = polyline(controls, tolerance)[0, :, 0]
    assert counts.tolist() == sorted(counts.tolist()) and counts[0] < counts[-1]
    edges = [0, *counts.cumsum(0).long().tolist()]
    for i, (start, end) in enumerate(itertools.pairwise(edges)):
        expected = torch.linspace(i / 4, (i + 1) / 4, end - start + 1, dtype=torch.float64)
        torch.testing.assert_close(t[start : end + 1], expected)
    uniform = math.ceil(math.sqrt(float(flattening_error(controls, 1)) / tolerance))
    assert counts.sum() < uniform and float(flattening_error(controls, uniform)) <= tolerance


def test_polyline_pads_with_the_end_point_and_leaves_lines_alone():
    straight = torch.tensor([[[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])  # Δ² = 0: one chord
    curved = torch.tensor([[[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    points = polyline(torch.cat([straight, curved]), 0.01)
    assert points.shape[1] > 2
    assert (points[0, 1:] == points[0, -1]).all() and points[0, -1].tolist() == [1.0, 0.0]
    line = torch.rand(3, 2, 2)
    assert polyline(line, 0.01) is line


def test_strokes_used_counts_opacity_above_a_tenth():
    strokes = torch.zeros(2, 3, 5)
    strokes[0, :, 4] = torch.tensor([0.9, 0.2, 0.11])
    strokes[1, :, 4] = torch.tensor([0.1, 0.0, 1.0])
    assert strokes_used(strokes, StrokeFormat("line", opacity=True)).tolist() == [3, 1]
    assert strokes_used(strokes[..., :4], StrokeFormat()).tolist() == [3, 3]


@pytest.mark.parametrize(
    ("name", "command", "numbers"),
    [("line", "L", 2), ("quadratic", "Q", 4), ("cubic+width+opacity+colour", "C", 6)],
)
def test_svg_parses_with_one_path_per_stroke(name, command, numbers):
    stroke_format = StrokeFormat.parse(name)
    low, high = stroke_format.bounds()
    u = np.random.default_rng(0).random((5, stroke_format.size), dtype=np.float32)
    strokes = torch.from_numpy(low + u * (high - low))
    root = ET.fromstring(strokes_to_svg(strokes, stroke_format, size=128, sigma2=1e-3))
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("width") == "128"
    paths = root.findall("{http://www.w3.org/2000/svg}path")
    assert len(paths) == 5
    style = stroke_format.style(strokes)
    for path, stroke, (width, opacity, *rgb) in zip(paths, strokes, style.tolist(), strict=True):
        move, *rest = path.get("d").split(f" {command} ")
        assert move.startswith("M ") and len(rest[0].split()) == numbers
        values = [float(v) for v in move[2:].split() + rest[0].split()]
        assert values == pytest.approx(stroke[: 2 * stroke_format.n_points].tolist(), abs=1e-4)
        assert float(path.get("stroke-width")) == pytest.approx(2 * math.sqrt(1e-3) * width, 1e-4)
        assert float(path.get("stroke-opacity")) == pytest.approx(opacity, abs=1e-4)
        assert path.get("stroke") == "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in rgb))


def test_svg_paper_and_ink_follow_invert_and_one_sketch_is_required():
    strokes = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    white = ET.fromstring(strokes_to_svg(strokes, invert=False))
    assert white[0].get("fill") == "black" and white[1].get("stroke") == "#ffffff"
    with pytest.raises(ValueError, match=r"draws one sketch \[n, size\], got \(1, 1, 4\)"):
        strokes_to_svg(strokes[None])
