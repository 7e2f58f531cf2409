"""The self-play experiment configuration: one dataclass, readable from JSON or TOML.

Precedence: the dataclass defaults < a ``--config`` file < command-line flags. Keys in
files may use ``-`` or ``_`` (``n-distractors`` == ``n_distractors``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.backbones import BACKBONES
from agents.losses import DRAWING_COSTS, LOSSES
from agents.models import SCORES
from agents.runs import THREADS, THREADS_HELP
from agents.zoo import resolve_weights
from sketchenv.game import GAMES
from sketchenv.strokes import PRIMITIVES, StrokeFormat

# Keys that may change when a run is resumed (they do not affect what is computed).
RESUMABLE_OVERRIDES = (
    "epochs",
    "max_steps",
    "time_budget",
    "device",
    "threads",
    "output",
    "log_every",
)
# Settings of how a run computes, not what it trains (each changes results in the last
# bits only). A resumed run keeps its own; one saved before a setting existed gets the
# behaviour it was started with; train.experiments does not compare them.
LEGACY_VALUES = {"feature_cache_mb": 0, "channels_last": False, "cpu_bfloat16": False}
SCHEDULES = ("cosine", "constant")


def option(default: Any, help: str, group: str, **meta: Any) -> Any:
    """A dataclass field with its command-line help and section (see :mod:`train.flags`);
    a list default is copied for every instance."""
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {}
    value = {} if factory else {"default": default}
    return field(**value, **factory, metadata={"help": help, "group": group, **meta})


@dataclass
class SelfPlayConfig:
    """Everything that defines a self-play run; each field is a flag of
    ``python -m train.selfplay`` (``--n-distractors`` for ``n_distractors``)."""

    # The game
    game: str = option("original", "game variant", "game", choices=GAMES)
    dataset: str = option("shapes", "registry name or imagefolder:PATH", "game")
    data_root: str = option("./data", "where datasets live", "game")
    download: bool = option(False, "download the dataset if missing", "game")
    image_size: int | None = option(
        None, "pixels per side", "game", default_help="32 for small, native for vgg16"
    )
    n_distractors: int | None = option(
        None, "distractors per game", "game", default_help="99 original, classes-1 for OO games"
    )
    lines: int = option(20, "strokes per sketch", "game")
    sigma2: float | None = option(
        None, "stroke width sigma^2 in canvas units", "game", default_help="5e-4*(96/size)^2"
    )
    invert: bool = option(True, "black strokes on white", "game")
    primitive: str = option(
        "line", "what a stroke is (sketchenv.strokes)", "game", choices=tuple(PRIMITIVES)
    )
    stroke_width: bool = option(False, "each stroke has its own width (0.25-4 x sigma)", "game")
    stroke_opacity: bool = option(
        False, "each stroke has an opacity in [0, 1]: the sender may leave strokes out", "game"
    )
    stroke_colour: bool = option(False, "each stroke has RGB ink, composited over", "game")
    # The agents
    backbone: str = option("small", "the encoder's backbone", "agents", choices=BACKBONES)
    weights: str | None = option(
        None,
        "imagenet | stylized:PATH_OR_URL | none | FILE_OR_URL | shipped name",
        "agents",
        default_help="imagenet for vgg16; for small, the shipped visual system of the dataset "
        "at this size and width when there is one (shapes at 32 and 64 px), else none",
    )
    backbone_width: int = option(32, "small backbone channels", "agents")
    freeze_backbone: bool | None = option(
        None,
        "train only projection and heads",
        "agents",
        default_help="on with pretrained weights, off without",
    )
    separate_encoders: bool = option(False, "sender and receiver own one each", "agents")
    latent_size: int = option(128, "projection output", "agents")
    sender_hidden: list[int] = option([256, 512], "sender MLP hidden sizes", "agents")
    curve_segments: int = option(
        1,
        "bend each run of this many of the sender's lines into one quadratic Bézier curve "
        "(it draws lines / N curves); 1 = free straight lines, as the paper",
        "agents",
        metavar="N",
    )
    receiver_hidden: list[int] = option([64], "receiver MLP hidden sizes", "agents")
    receiver_out: int = option(64, "receiver embedding size", "agents")
    score: str = option("cosine", "dot = paper", "agents", choices=SCORES)
    score_scale: float = option(10.0, "initial cosine scale", "agents")
    # The losses
    loss: str = option("hinge", "the game loss", "losses and optimisation", choices=LOSSES)
    perceptual_coef: float = option(
        0.0, "perceptual loss weight (0 = off)", "losses and optimisation"
    )
    perceptual_net: str = option(
        "drawing",
        "drawing | edges | agents | vgg16[:WEIGHTS] | weights FILE or shipped name",
        "losses and optimisation",
    )
    perceptual_weights: list[float] | None = option(
        None,
        "per tap of the perceptual network",
        "losses and optimisation",
        default_help="drawing: 4 2 1 1; others: all 1",
    )
    drawing_cost: float = option(
        0.0, "weight of the drawing cost (0 = off)", "losses and optimisation"
    )
    drawing_cost_kind: str = option(
        "strokes",
        "strokes: the mean square root of the strokes' opacities, a soft count of the "
        "strokes used (needs --stroke-opacity); ink: the inked fraction of the canvas",
        "losses and optimisation",
        choices=DRAWING_COSTS,
    )
    epochs: int = option(6, "passes over the training split", "losses and optimisation")
    batch_size: int = option(100, "games per step (over all processes)", "losses and optimisation")
    lr: float = option(1e-3, "AdamW learning rate", "losses and optimisation")
    weight_decay: float = option(0.0, "AdamW decoupled decay", "losses and optimisation")
    lr_schedule: str = option(
        "cosine", "learning-rate schedule", "losses and optimisation", choices=SCHEDULES
    )
    warmup_steps: int = option(100, "linear warm-up", "losses and optimisation")
    grad_clip: float | None = option(1.0, "max gradient norm, 0 = off", "losses and optimisation")
    # The run
    seed: int = option(0, "weights, games and dataset splits", "run")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", "run")
    threads: int = option(THREADS, THREADS_HELP, "run")
    amp: bool = option(True, "float16 autocast on CUDA", "run")
    cpu_bfloat16: bool = option(
        False,
        "bfloat16 autocast on the CPU: about 2x faster VGG16 on CPUs with AVX512-BF16 or "
        "AMX, results differ from float32 in the low bits",
        "run",
    )
    channels_last: bool = option(
        True,
        "channels-last memory for the backbones' convolutions (1.2-1.5x faster on the CPU)",
        "run",
    )
    feature_cache_mb: int = option(
        2048,
        "memory for a frozen backbone's features of the training images, computed once per "
        "image instead of once per game (0 = off)",
        "run",
    )
    output: str | None = option(
        None, "run directory", "run", default_help="runs/selfplay-<game>-<time>"
    )
    val_games: int = option(1000, "validation games per pass", "run")
    max_steps: int | None = option(None, "stop after this many steps in all", "run")
    time_budget: float | None = option(None, "stop after this many seconds (this process)", "run")
    log_every: int = option(20, "steps between TensorBoard points", "run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SelfPlayConfig:
        return config_from_dict({**self.to_dict(), **changes})


def stroke_format_of(config: SelfPlayConfig) -> StrokeFormat:
    """The stroke format a config draws with (``--primitive`` and the ``--stroke-*`` flags)."""
    return StrokeFormat(
        config.primitive,
        width=config.stroke_width,
        opacity=config.stroke_opacity,
        colour=config.stroke_colour,
    )


def default_sigma2(image_size: int) -> float:
    """The paper's sigma^2 = 5e-4 at 96 px, scaled so strokes keep its width in pixels."""
    return 5e-4 * (96 / image_size) ** 2


def config_from_dict(values: dict[str, Any]) -> SelfPlayConfig:
    """Build a config from a mapping, rejecting unknown keys and checking values."""
    config = dataclass_from_mapping(SelfPlayConfig, values)
    check_config(config)
    return config


def dataclass_from_mapping(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with keys spelt ``-`` or ``_``; an unknown key, or a value of the
    wrong type for its field (``lr = "fast"``, ``epochs = 1.5``), raises ``ValueError``."""
    hints = typing.get_type_hints(cls)
    cleaned = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(cleaned) - set(hints))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(hints)}")
    for name, value in cleaned.items():
        expected = _describe_type(hints[name])
        if not _has_type(value, hints[name]):
            raise ValueError(
                f"config key {name!r} must be {expected}, got {value!r} ({type(value).__name__})"
            )
    return cls(**cleaned)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` as JSON/TOML would give it: ints for floats are
    fine, bools are not numbers, lists hold the element type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is list:
        return isinstance(value, list | tuple) and all(_has_type(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe_type(hint: Any) -> str:
    """``int | None`` -> "an integer or null (unset)", ``list[int]`` -> "a list of integers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin is list:
        return f"a list of {_describe_type(args[0]).split(' ', 1)[1]}s"
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)"}
    return "null (unset)" if hint is type(None) else names.get(hint, f"a {hint.__name__}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) experiment file into a flat mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"config file {str(path)!r} must end in .json or .toml")
    toml = _toml_module() if path.suffix == ".toml" else None
    try:
        data = toml.loads(path.read_text()) if toml else json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"could not parse config file {str(path)!r}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table/object of options")
    return data


def _toml_module() -> Any:
    """``tomllib`` (Python >= 3.11) or the ``tomli`` backport."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError(
                "TOML config files need Python >= 3.11 or `pip install tomli`; "
                "or write the config as JSON"
            ) from None
    return tomllib


def check_config(c: SelfPlayConfig) -> None:
    """Raise ``ValueError`` naming the first option whose value cannot work."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    need(c.game in GAMES, f"game must be one of {GAMES}, got {c.game!r}")
    need(c.backbone in BACKBONES, f"backbone must be {' or '.join(BACKBONES)}, got {c.backbone!r}")
    need(c.loss in LOSSES, f"loss must be {' or '.join(LOSSES)}, got {c.loss!r}")
    need(c.score in SCORES, f"score must be {' or '.join(SCORES)}, got {c.score!r}")
    need(c.lr_schedule in SCHEDULES, f"lr_schedule must be {' or '.join(SCHEDULES)}")
    need(c.image_size is None or c.image_size >= 8, "image_size must be >= 8 (or unset)")
    need(c.n_distractors is None or c.n_distractors >= 1, "n_distractors must be >= 1")
    need(c.lines >= 1, "lines must be >= 1")
    need(c.curve_segments >= 1, "curve_segments must be >= 1")
    need(
        c.lines % c.curve_segments == 0,
        f"lines ({c.lines}) must be a multiple of curve_segments ({c.curve_segments}): the "
        f"sender draws lines / curve_segments curves, e.g. --lines 80 --curve-segments 4",
    )
    need(c.primitive in PRIMITIVES, f"primitive must be one of {list(PRIMITIVES)}")
    need(
        c.curve_segments == 1 or str(stroke_format_of(c)) == "line",
        "curve_segments bends plain lines into curves; with --primitive quadratic or cubic, "
        "or --stroke-width/--stroke-opacity/--stroke-colour, leave it at 1",
    )
    need(0 <= c.drawing_cost < math.inf, "drawing_cost must be a finite number >= 0")
    need(
        c.drawing_cost_kind in DRAWING_COSTS,
        f"drawing_cost_kind must be one of {DRAWING_COSTS}",
    )
    need(
        c.drawing_cost == 0 or c.drawing_cost_kind != "strokes" or c.stroke_opacity,
        "the 'strokes' drawing cost counts strokes by their opacity: add --stroke-opacity "
        "(or --drawing-cost-kind ink)",
    )
    need(c.sigma2 is None or c.sigma2 > 0, "sigma2 must be > 0 (or unset)")
    need(c.epochs >= 1, "epochs must be >= 1")
    need(c.batch_size >= 1, "batch_size must be >= 1")
    need(0 < c.lr < math.inf, "lr must be a finite number > 0")
    need(0 <= c.seed < 2**63, "seed must be >= 0 (and below 2**63)")
    need(c.backbone_width >= 1, "backbone_width must be >= 1")
    need(c.weight_decay >= 0, "weight_decay must be >= 0")
    need(c.warmup_steps >= 0, "warmup_steps must be >= 0")
    need(c.grad_clip is None or c.grad_clip >= 0, "grad_clip must be >= 0 (0 or unset: off)")
    need(0 <= c.perceptual_coef < math.inf, "perceptual_coef must be a finite number >= 0")
    need(
        all(0 <= w < math.inf for w in c.perceptual_weights or []),
        "perceptual_weights must be finite numbers >= 0",
    )
    need(
        c.perceptual_net in ("agents", "edges", "drawing", "vgg16")
        or c.perceptual_net.startswith("vgg16:")
        or resolve_weights(c.perceptual_net) is not None,
        f"unknown perceptual_net {c.perceptual_net!r}: choose agents, edges, drawing, vgg16, "
        "vgg16:WEIGHTS, a weights file from python -m train.pretrain or a shipped name",
    )
    need(c.score_scale >= 1, "score_scale must be >= 1")
    need(c.val_games >= 1, "val_games must be >= 1")
    need(c.max_steps is None or c.max_steps >= 1, "max_steps must be >= 1 (or unset)")
    need(c.threads >= 0, f"threads must be >= 0 (0 = torch's default), got {c.threads}")
    need(c.time_budget is None or c.time_budget > 0, "time_budget must be > 0 (or unset)")
    need(c.log_every >= 1, "log_every must be >= 1")
    need(c.feature_cache_mb >= 0, "feature_cache_mb must be >= 0 (0 = off)")
    need(c.latent_size >= 1 and c.receiver_out >= 1, "latent/receiver sizes must be >= 1")
    need(all(int(h) >= 1 for h in [*c.sender_hidden, *c.receiver_hidden]), "hidden sizes >= 1")
