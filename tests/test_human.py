"""The pygame window and the human policies, driven headless by posting real pygame events."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

pygame = pytest.importorskip("pygame")

from sketchenv import human  # noqa: E402
from sketchenv.human import GameWindow, HumanReceiver, HumanSender, PlayerQuit  # noqa: E402
from sketchenv.strokes import StrokeFormat  # noqa: E402


class TinyDataset(Dataset):
    """Random-colour images of 4 classes, small enough for fast env tests."""

    classes = ("a", "b", "c", "d")

    def __init__(self, n: int = 24, size: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = [i % 4 for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@pytest.fixture
def display(monkeypatch):
    """A fresh headless display for each test (the module keeps one per process)."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setattr(human, "_display", human._Display())
    yield human._display
    if human._display.surface is not None:
        pygame.display.quit()


def opened(window: GameWindow) -> GameWindow:
    """Open the display now: events can be posted only to an open display."""
    window.surface  # noqa: B018
    return window


def post(kind, **attributes) -> None:
    pygame.event.post(pygame.event.Event(kind, **attributes))


def key(code, mod=0) -> None:
    post(pygame.KEYDOWN, key=code, mod=mod)


def drag(start, end, button=1) -> None:
    post(pygame.MOUSEBUTTONDOWN, pos=start, button=button)
    post(pygame.MOUSEBUTTONUP, pos=end, button=button)


def centre(rect) -> tuple[int, int]:
    x, y, w, h = rect
    return x + w // 2, y + h // 2


def images(n: int, h: int = 16, w: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def pixel_centre(rect, image_size, row: int, column: int) -> tuple[int, int]:
    """The window pixel under the centre of image pixel (row, column) shown in ``rect``."""
    height, width = image_size
    x, y, w, h = rect
    return int(x + (column + 0.5) * w / width), int(y + (row + 0.5) * h / height)


def test_importing_and_playing_without_render_mode_never_loads_pygame():
    code = textwrap.dedent(
        """
        import sys, numpy as np, torch
        import sketchenv, sketchenv.human
        from torch.utils.data import TensorDataset
        data = TensorDataset(torch.rand(12, 3, 8, 8), torch.arange(12) % 3)
        env = sketchenv.parallel_env(dataset=data, n_distractors=3)
        env.reset(seed=0)
        env.step({"sender_0": np.zeros((20, 4), np.float32), "receiver_0": 0})
        env.step({"sender_0": np.zeros((20, 4), np.float32), "receiver_0": 1})
        env.close()
        sketchenv.human.GameWindow(), sketchenv.human.HumanReceiver()
        assert "pygame" not in sys.modules, "pygame was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_click_on_candidate_k_selects_k(display):
    window = opened(GameWindow())
    candidates = images(12)
    for k in (0, 5, 11):
        tile = window.receiver_layout((16, 16), 12).candidates[k]
        post(pygame.MOUSEBUTTONDOWN, pos=centre(tile), button=1)
        assert window.choose(images(1)[0], candidates) == k
        assert window.layout.candidates[k] == tile  # the view drew the tile where we clicked


def test_clicks_outside_candidates_and_other_buttons_are_ignored(display):
    window = opened(GameWindow())
    layout = window.receiver_layout((16, 16), 5)
    post(pygame.MOUSEBUTTONDOWN, pos=centre(layout.main), button=1)  # on the sketch
    post(pygame.MOUSEBUTTONDOWN, pos=centre(layout.candidates[1]), button=3)  # right button
    post(pygame.MOUSEBUTTONDOWN, pos=centre(layout.candidates[3]), button=1)
    assert window.choose(images(1)[0], images(5)) == 3


@pytest.mark.parametrize(
    ("n", "keys", "expected"),
    [
        (12, [pygame.K_1, pygame.K_1], 11),  # "11": no longer number exists, picked at once
        (12, [pygame.K_1, pygame.K_RETURN], 1),  # "1" could start "10", "11": Enter confirms
        (12, [pygame.K_3], 3),
        (12, [pygame.K_0], 0),  # numbers start at 0, as the env's actions
        (12, [pygame.K_1, pygame.K_BACKSPACE, pygame.K_5], 5),
        (12, [pygame.K_1, pygame.K_2, pygame.K_4], 4),  # "12" is no candidate: starts again
        (100, [pygame.K_KP9, pygame.K_KP9], 99),  # keypad digits, shown "99"
        (100, [pygame.K_4, pygame.K_2], 42),
        (9, [pygame.K_8], 8),
    ],
)
def test_typing_a_candidate_number_selects_it(display, n, keys, expected):
    window = opened(GameWindow())
    for code in keys:
        key(code)
    assert window.choose(images(1)[0], images(n)) == expected


def test_drag_draws_a_stroke_in_canvas_coordinates(display):
    """A drag between two image pixels' centres gives those pixels' canvas coordinates."""
    height, width = 24, 40  # not square, so swapped axes would show
    window = opened(GameWindow())
    canvas = window.sender_layout((height, width)).canvas
    (r0, c0), (r1, c1) = (3, 5), (20, 33)
    drag(
        pixel_centre(canvas, (height, width), r0, c0), pixel_centre(canvas, (height, width), r1, c1)
    )
    key(pygame.K_RETURN)
    strokes = window.draw(images(1, height, width)[0], n_lines=5)
    assert strokes.shape == (5, 4) and strokes.dtype == np.float32
    expected = [
        -1 + 2 * c0 / (width - 1),
        -1 + 2 * r0 / (height - 1),
        -1 + 2 * c1 / (width - 1),
        -1 + 2 * r1 / (height - 1),
    ]
    one_window_pixel = 2 / (width - 1) * width / canvas[2]
    np.testing.assert_allclose(strokes[0], expected, atol=one_window_pixel)
    # strokes not drawn are zero-length points on the first stroke's start
    np.testing.assert_allclose(strokes[1:], np.tile(strokes[0, [0, 1, 0, 1]], (4, 1)))

    # the env's rasteriser draws the line through exactly those pixels
    from sketchenv.raster import render_strokes

    sketch = render_strokes(torch.from_numpy(strokes), (height, width)).numpy()
    assert sketch[r0, c0] < 0.1 and sketch[r1, c1] < 0.1  # black ink on white
    assert sketch[r1, c0] > 0.9 and sketch[r0, c1] > 0.9  # far corners stay white


def test_canvas_mapping_is_the_raster_convention_at_the_edges():
    rect, size = (100, 50, 400, 200), (10, 20)  # 20 window pixels per image pixel
    tolerance = 2 / 9 / 20  # one window pixel in canvas units (the coarser y axis)
    first = human.to_canvas(pixel_centre(rect, size, 0, 0), rect, size)
    last = human.to_canvas(pixel_centre(rect, size, 9, 19), rect, size)
    assert first == pytest.approx((-1.0, -1.0), abs=tolerance)
    assert last == pytest.approx((1.0, 1.0), abs=tolerance)
    assert human.to_canvas(pixel_centre(rect, size, 4, 7), rect, size) == pytest.approx(
        (-1 + 2 * 7 / 19, -1 + 2 * 4 / 9), abs=tolerance
    )
    assert human.to_canvas((0, 0), rect, size) == (-1.0, -1.0)  # outside clips
    for point in [(-0.5, 0.25), (0.9, -0.7)]:
        np.testing.assert_allclose(
            human.to_canvas(human.from_canvas(point, rect, size), rect, size), point, atol=1e-9
        )


def test_undo_by_backspace_ctrl_z_and_right_click(display):
    window = opened(GameWindow())
    canvas = window.sender_layout((16, 16)).canvas
    points = [pixel_centre(canvas, (16, 16), r, c) for r, c in [(1, 1), (1, 14), (14, 14), (14, 1)]]
    drag(points[0], points[1])  # stroke A
    drag(points[1], points[2])  # stroke B
    key(pygame.K_BACKSPACE)  # -> A
    drag(points[2], points[3])  # C
    drag(points[3], points[0])  # D
    key(pygame.K_z, pygame.KMOD_LCTRL)  # -> A C
    drag(points[0], points[2])  # E
    post(pygame.MOUSEBUTTONDOWN, pos=points[3], button=3)  # right click -> A C
    key(pygame.K_z)  # z without Ctrl does nothing
    key(pygame.K_RETURN)
    strokes = window.draw(images(1)[0], n_lines=4)
    a = human.to_canvas(points[0], canvas, (16, 16)) + human.to_canvas(points[1], canvas, (16, 16))
    c = human.to_canvas(points[2], canvas, (16, 16)) + human.to_canvas(points[3], canvas, (16, 16))
    np.testing.assert_allclose(strokes[:2], [a, c], atol=1e-6)
    np.testing.assert_allclose(strokes[2:], [a[:2] * 2, a[:2] * 2], atol=1e-6)


def test_enter_sends_only_after_a_stroke_and_at_most_n_lines(display):
    window = opened(GameWindow())
    canvas = window.sender_layout((16, 16)).canvas
    key(pygame.K_RETURN)  # nothing drawn yet: not sent
    for column in (2, 6, 10):  # three drags, only two lines allowed
        drag(pixel_centre(canvas, (16, 16), 2, column), pixel_centre(canvas, (16, 16), 12, column))
    post(pygame.MOUSEBUTTONDOWN, pos=(5, 5), button=1)  # outside the canvas: no stroke
    post(pygame.MOUSEBUTTONUP, pos=(6, 6), button=1)
    key(pygame.K_KP_ENTER)
    strokes = window.draw(images(1)[0], n_lines=2)
    np.testing.assert_allclose(strokes[:, 0], [-1 + 4 / 15, -1 + 12 / 15], atol=0.01)


@pytest.mark.parametrize("view", ["choose", "draw", "show_wait", "message"])
@pytest.mark.parametrize("quit_event", ["escape", "close"])
def test_escape_or_closing_the_window_quits_every_view(display, view, quit_event):
    window = opened(GameWindow())
    state = {
        "sender_image": images(1)[0],
        "sketch": images(1)[0],
        "candidates": np.stack(images(4)),
        "phase": 1,
        "choice": 2,
        "target": 1,
        "episode": 0,
        "wins": 0,
        "n_lines": 3,
    }
    run = {
        "choose": lambda: window.choose(state["sketch"], list(state["candidates"])),
        "draw": lambda: window.draw(state["sender_image"], 3),
        "show_wait": lambda: window.show(state, wait=True),
        "message": lambda: window.message("hello", ["press a key"]),
    }[view]
    if view in ("show_wait", "message"):  # these drop input given before they appear
        pygame.time.set_timer(pygame.KEYDOWN, 0)
        event = (
            pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0)
            if quit_event == "escape"
            else pygame.event.Event(pygame.QUIT)
        )
        pygame.time.set_timer(event, 20, loops=1)
    elif quit_event == "escape":
        key(pygame.K_ESCAPE)
    else:
        post(pygame.QUIT)
    with pytest.raises(PlayerQuit):
        run()


def test_show_marks_the_target_only_with_feedback(display):
    state = {
        "sender_image": images(1)[0],
        "sketch": images(2)[0],
        "candidates": np.stack(images(6)),
        "phase": 1,
        "choice": 4,
        "target": 1,
        "episode": 3,
        "wins": 2,
        "n_lines": 20,
    }

    def frame_colour(window, index):
        x, y, _, _ = window.layout.candidates[index]
        return tuple(window.surface.get_at((x - 2, y - 2)))[:3]

    window = opened(GameWindow(feedback=True))
    window.show(state)
    assert frame_colour(window, 1) == human.RIGHT
    assert frame_colour(window, 4) == human.WRONG
    assert window.layout.sender_image is not None

    window.feedback = False
    window.show(state)
    assert frame_colour(window, 1) == human.BACKGROUND
    assert frame_colour(window, 4) == human.NEUTRAL
    assert window.layout.sender_image is None  # nothing tells the player the answer


def test_a_human_receiver_never_sees_the_sender_image_before_choosing(display):
    receiver = HumanReceiver(feedback=True)
    state = {
        "sender_image": images(1)[0],
        "sketch": None,
        "candidates": np.stack(images(6)),
        "phase": 0,
        "choice": None,
        "target": None,
        "episode": 0,
        "wins": 0,
        "n_lines": 20,
    }
    window = receiver.window
    window.show(state)  # the sender's turn: nothing of the game is shown
    assert window.layout.main is None and not window.layout.candidates
    window.show({**state, "phase": 1, "sketch": images(2)[0]})
    assert window.layout.sender_image is None and len(window.layout.candidates) == 6
    window.show({**state, "phase": 1, "sketch": images(2)[0], "choice": 0, "target": 3})
    assert window.layout.sender_image is not None  # revealed with the outcome
    receiver.close()


def test_human_policies_act_only_in_their_phase(display):
    receiver, sender = HumanReceiver(), HumanSender(n_lines=7)
    sketch = {"sketch": images(1)[0], "candidate_0": images(1)[0], "phase": 0}
    assert receiver(sketch, "receiver_0") == 0
    idle = sender({"image": images(1)[0], "phase": 1}, "sender_0")
    assert idle.shape == (7, 4) and not idle.any()
    assert display.surface is None  # no window was needed for that
    with pytest.raises(ValueError, match="observation dict"):
        receiver(np.zeros((4, 4, 3), np.uint8), "receiver_0")
    with pytest.raises(ValueError, match="n_lines"):
        HumanSender()({"image": images(1)[0], "phase": 0}, "sender_0")
    with pytest.raises(ValueError, match="uint8"):
        GameWindow().choose(np.zeros((8, 8)), images(2))


def test_windows_share_the_one_display_until_the_last_closes(display):
    first, second = GameWindow(), GameWindow()
    first.surface, second.surface  # noqa: B018 - opens both handles
    assert first.surface is second.surface
    first.close()
    assert pygame.display.get_init()
    second.close()
    assert not pygame.display.get_init()


# --- the env in render mode "human" -------------------------------------------------------
def make_env(**kwargs):
    import sketchenv

    return sketchenv.parallel_env(dataset=TinyDataset(), n_distractors=5, n_lines=4, **kwargs)


def test_human_receiver_plays_in_the_env_window_against_an_agent_sender(display):
    env = make_env(render_mode="human")
    receiver = HumanReceiver()  # its own handle on the env's window
    opened(receiver.window)
    observations, _ = env.reset(seed=1)
    strokes = np.array([[-0.5, -0.5, 0.5, 0.5]] * 4, np.float32)
    observations, *_ = env.step({"sender_0": strokes, "receiver_0": 0})
    assert env._window is not None and display.state["phase"] == 1
    target = int(env.current_game.targets[0, 0])  # peek, to click the right one
    tile = receiver.window.receiver_layout((16, 16), 6).candidates[target]
    post(pygame.MOUSEBUTTONDOWN, pos=centre(tile), button=1)
    choice = receiver(observations["receiver_0"], "receiver_0")
    _, rewards, terminations, _, infos = env.step({"sender_0": strokes, "receiver_0": choice})
    assert choice == target and rewards["receiver_0"] == 1.0 and terminations["receiver_0"]
    assert infos["receiver_0"]["correct"] == 1
    assert display.state["choice"] == target  # the env showed the outcome in the window
    env.close()
    assert pygame.display.get_init()  # the receiver still holds the window
    receiver.close()
    assert not pygame.display.get_init() and "receiver" not in display.humans


def test_human_sender_drawing_reaches_the_env_sketch(display):
    env = make_env()
    sender = HumanSender(n_lines=4)
    opened(sender.window)
    observations, _ = env.reset(seed=2)
    canvas = sender.window.sender_layout((16, 16)).canvas
    drag(pixel_centre(canvas, (16, 16), 8, 1), pixel_centre(canvas, (16, 16), 8, 14))
    key(pygame.K_RETURN)
    strokes = sender(observations["sender_0"], "sender_0")
    observations, *_ = env.step({"sender_0": strokes, "receiver_0": 0})
    sketch = observations["receiver_0"]["sketch"]
    assert sketch[8, 1:15].max() < 30 and sketch[1, :].min() > 225  # a dark row, white elsewhere
    sender.close()


@pytest.mark.filterwarnings("ignore:The old environment creation API:DeprecationWarning")
def test_pettingzoo_render_test_human_and_rgb_array(display):
    from pettingzoo.test.render_test import render_test

    import sketchenv

    def env_fn(render_mode=None):
        return sketchenv.env(dataset=TinyDataset(), n_distractors=5, render_mode=render_mode)

    render_test(env_fn)


# --- freehand drawing: the path -> strokes maths, then the window -------------------------
def cubic(control, t) -> np.ndarray:
    """Points of the Bézier curve of ``control`` at parameters ``t``."""
    control, t = np.asarray(control, float), np.asarray(t, float)[:, None]
    degree = len(control) - 1
    weights = [math.comb(degree, j) * t**j * (1 - t) ** (degree - j) for j in range(degree + 1)]
    return sum(w * c for w, c in zip(weights, control, strict=True))


def test_simplification_keeps_a_straight_drag_as_one_segment_and_an_l_as_two():
    rng = np.random.default_rng(0)
    along = np.linspace(-0.8, 0.6, 50)
    straight = np.stack([along, 0.2 + 0.3 * along], axis=1) + rng.normal(0, 0.002, (50, 2))
    kept = human.simplify_path(straight, tolerance=0.02)
    np.testing.assert_array_equal(kept, straight[[0, -1]])  # the ends, exactly
    down = np.stack([np.full(20, -0.5), np.linspace(-0.7, 0.5, 20)], axis=1)
    across = np.stack([np.linspace(-0.5, 0.6, 20), np.full(20, 0.5)], axis=1)
    ell = np.vstack([down, across[1:]]) + rng.normal(0, 0.002, (39, 2))
    kept = human.simplify_path(ell, tolerance=0.02)
    assert len(kept) == 3
    np.testing.assert_allclose(kept[1], [-0.5, 0.5], atol=0.01)  # the corner
    # a cap keeps the farthest corners first; a click is a point twice
    zigzag = [(x, 0.3 * (i % 2)) for i, x in enumerate(np.linspace(-1, 1, 9))]
    assert len(human.simplify_path(zigzag, 0.01)) == 9
    assert len(human.simplify_path(zigzag, 0.01, max_points=4)) == 4
    np.testing.assert_array_equal(human.simplify_path([(0.1, 0.2)], 0.01), [(0.1, 0.2)] * 2)


@pytest.mark.parametrize(
    "control",
    [
        [(-0.8, 0.6), (-0.3, -0.9), (0.5, 0.9), (0.7, -0.4)],  # an S
        [(-0.6, -0.6), (0.9, -0.2), (-0.1, 0.8), (0.5, 0.5)],  # a loop-ish hook
        [(-0.7, 0.5), (0.0, -0.9), (0.8, 0.4)],  # a quadratic arch
    ],
)
def test_a_bezier_fit_to_points_of_a_known_curve_recovers_its_control_points(control):
    points = cubic(control, np.linspace(0, 1, 40) ** 1.3)  # not evenly spaced along it
    fitted = human.fit_bezier(points, len(control) - 1)
    np.testing.assert_allclose(fitted, control, atol=1e-6)


def test_a_fit_to_a_straight_drag_is_collinear_and_a_click_is_degenerate():
    start, end = np.array([-0.6, -0.2]), np.array([0.7, 0.4])
    t = np.sort(np.random.default_rng(1).uniform(0, 1, 30))
    line = start + np.outer(np.r_[0, t, 1], end - start)
    for degree in (2, 3):
        fitted = human.fit_bezier(line, degree)
        np.testing.assert_allclose(fitted[[0, -1]], [start, end])
        direction = (end - start) / np.linalg.norm(end - start)
        offsets = fitted - start
        np.testing.assert_allclose(offsets[:, 0] * direction[1], offsets[:, 1] * direction[0])
    for points in ([(0.3, -0.1)], [(0.3, -0.1)] * 5):  # a click, held still
        np.testing.assert_array_equal(human.fit_bezier(points, 3), [(0.3, -0.1)] * 4)
        (stroke,) = human.path_to_strokes(points, "cubic")
        np.testing.assert_array_equal(stroke, [0.3, -0.1] * 4)
    # a drag of fewer points than the curve's controls is its chord, controls evenly on it
    np.testing.assert_allclose(
        human.fit_bezier([start, end], 3), [start + k / 3 * (end - start) for k in range(4)]
    )


def test_path_to_strokes_follows_the_format_and_the_strokes_left():
    ell = [(-0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)]
    lines = human.path_to_strokes(ell, "line+width+opacity+colour", tolerance=0.01)
    np.testing.assert_allclose(
        lines,
        [[-0.5, -0.5, -0.5, 0.5, 1, 1, 0, 0, 0], [-0.5, 0.5, 0.5, 0.5, 1, 1, 0, 0, 0]],
    )
    (one,) = human.path_to_strokes(ell, "line", tolerance=0.01, max_strokes=1)
    np.testing.assert_allclose(one, [-0.5, -0.5, 0.5, 0.5])  # simplified to fit
    np.testing.assert_allclose(human.path_to_strokes([(0.2, 0.1)], "line"), [[0.2, 0.1] * 2])
    arc = cubic([(-0.9, 0.9), (-0.9, -1.6), (0.9, -1.6), (0.9, 0.9)], np.linspace(0, 1, 30))
    (curve,) = human.path_to_strokes(arc, "cubic+opacity")
    assert curve.shape == (9,) and curve[-1] == 1.0
    assert curve[:8].min() == -1.0  # the controls above the canvas are clipped onto it
    np.testing.assert_allclose(curve[[0, 1, 6, 7]], [-0.9, 0.9, 0.9, 0.9])


def test_padding_leaves_strokes_out_with_opacity_or_makes_dots_without():
    drawn = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]]  # a quadratic with opacity
    padded = human.pad_strokes(drawn, 3, "quadratic+opacity")
    assert padded.shape == (3, 7) and padded.dtype == np.float32
    np.testing.assert_allclose(padded[1:, -1], 0.0)  # left out
    np.testing.assert_allclose(padded[1:, :6], [[0.1, 0.2] * 3] * 2)
    padded = human.pad_strokes([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], 2, "quadratic")
    np.testing.assert_allclose(padded[1], [0.1, 0.2] * 3)  # a dot on the first start
    with pytest.raises(ValueError, match="1 to 2 strokes"):
        human.pad_strokes([[0.0] * 6] * 3, 2, "quadratic")


def freehand(points) -> None:
    """Press at the first window point, move through the rest, release at the last."""
    post(pygame.MOUSEBUTTONDOWN, pos=points[0], button=1)
    for point in points[1:-1]:
        post(pygame.MOUSEMOTION, pos=point, rel=(0, 0), buttons=(1, 0, 0))
    post(pygame.MOUSEBUTTONUP, pos=points[-1], button=1)


def window_path(canvas_points, canvas, size=(16, 16)) -> list[tuple[int, int]]:
    return [tuple(round(v) for v in human.from_canvas(p, canvas, size)) for p in canvas_points]


def test_a_freehand_drag_becomes_a_polyline_and_undo_removes_the_whole_drag(display):
    window = opened(GameWindow())
    canvas = window.sender_layout((16, 16)).canvas
    corner = np.array([[-0.6, -0.6], [-0.6, 0.6], [0.6, 0.6]])
    ell = np.vstack([np.linspace(corner[0], corner[1], 15), np.linspace(corner[1], corner[2], 15)])
    straight = np.linspace([-0.8, -0.8], [0.8, -0.2], 12)
    freehand(window_path(ell, canvas))  # two segments
    freehand(window_path(straight, canvas))  # one
    key(pygame.K_BACKSPACE)  # undoes the straight drag
    freehand(window_path(straight[::-1], canvas))
    post(pygame.MOUSEBUTTONDOWN, pos=window_path(corner[:1], canvas)[0], button=3)  # undo it
    key(pygame.K_RETURN)
    strokes = window.draw(images(1)[0], n_lines=5)
    assert strokes.shape == (5, 4)
    pixel = 2 / 15 * 16 / canvas[2]  # one window pixel in canvas units
    np.testing.assert_allclose(
        strokes[:2], [[*corner[0], *corner[1]], [*corner[1], *corner[2]]], atol=pixel
    )
    np.testing.assert_allclose(strokes[2:], np.tile(strokes[0, :2], (3, 2)))  # dots

    # more corners than strokes left: simplified to fit; then every further drag refused
    zigzag = [(x, -0.5 + (i % 2)) for i, x in enumerate(np.linspace(-0.9, 0.9, 7))]
    freehand(window_path(zigzag, canvas))
    freehand(window_path(straight, canvas))  # refused: both lines are used
    key(pygame.K_RETURN)
    strokes = window.draw(images(1)[0], n_lines=2)
    np.testing.assert_allclose(strokes[0, :2], zigzag[0], atol=pixel)
    np.testing.assert_allclose(strokes[1, 2:], zigzag[-1], atol=pixel)
    np.testing.assert_allclose(strokes[0, 2:], strokes[1, :2])  # one joined polyline


def test_a_freehand_drag_becomes_one_cubic_curve_and_padding_is_left_out(display):
    window = opened(GameWindow())
    size = (32, 32)
    canvas = window.sender_layout(size).canvas
    control = np.array([(-0.8, 0.6), (-0.3, -0.9), (0.5, 0.9), (0.7, -0.4)])
    s_curve = cubic(control, np.linspace(0, 1, 60))
    freehand(window_path(s_curve, canvas, size))
    freehand(window_path([(0.5, 0.5), (0.6, 0.5), (0.7, 0.5)], canvas, size))
    key(pygame.K_z, pygame.KMOD_LCTRL)  # undo the second curve
    freehand(window_path([(0.2, -0.3)], canvas, size))  # a click: a dot
    key(pygame.K_RETURN)
    strokes = window.draw(images(1, *size)[0], n_lines=4, stroke_format="cubic+opacity")
    assert strokes.shape == (4, 9) and strokes.dtype == np.float32
    low, high = StrokeFormat.parse("cubic+opacity").bounds()
    assert (strokes >= low).all() and (strokes <= high).all()
    pixel = 2 / 31 * 32 / canvas[2]
    np.testing.assert_allclose(strokes[0, [0, 1, 6, 7]], control[[0, 3]].ravel(), atol=pixel)
    np.testing.assert_allclose(strokes[0, 2:6], control[1:3].ravel(), atol=0.05)  # a fit
    np.testing.assert_allclose(strokes[1, :8], [0.2, -0.3] * 4, atol=pixel)
    np.testing.assert_array_equal(strokes[:, 8], [1, 1, 0, 0])  # two drawn, two left out

    from sketchenv.raster import render_strokes

    sketch = render_strokes(torch.from_numpy(strokes), size, stroke_format="cubic+opacity")
    on_curve = cubic(control, [0.25, 0.5, 0.75])
    for x, y in on_curve:  # the rasterised curve passes where it was drawn
        row, column = round((y + 1) * 31 / 2), round((x + 1) * 31 / 2)
        assert sketch[row, column] < 0.5


def test_a_human_sender_reads_the_curve_format_of_the_env_it_plays(display):
    env = make_env(render_mode="human", stroke_format="cubic+opacity")
    sender = HumanSender()  # n_lines and the format come from the env's window
    opened(sender.window)
    observations, _ = env.reset(seed=2)
    assert display.state["stroke_format"] == "cubic+opacity"
    idle = sender({"image": images(1)[0], "phase": 1})
    assert idle.shape == (4, 9) and env.action_space("sender_0").contains(idle)
    canvas = sender.window.sender_layout((16, 16)).canvas
    arch = cubic([(-0.9, 0.6), (-0.5, -1.0), (0.5, -1.0), (0.9, 0.6)], np.linspace(0, 1, 40))
    freehand(window_path(arch, canvas))
    key(pygame.K_RETURN)
    strokes = sender(observations["sender_0"], "sender_0")
    assert env.action_space("sender_0").contains(strokes)
    np.testing.assert_array_equal(strokes[:, -1], [1, 0, 0, 0])
    observations, *_ = env.step({"sender_0": strokes, "receiver_0": 0})
    sketch = observations["receiver_0"]["sketch"]
    top = cubic([(-0.9, 0.6), (-0.5, -1.0), (0.5, -1.0), (0.9, 0.6)], [0.5])[0]
    row, column = round((top[1] + 1) * 15 / 2), round((top[0] + 1) * 15 / 2)
    assert sketch[row, column].max() < 100 and sketch[15, 7].min() > 225  # ink on the arch only
    env.close()
    sender.close()
