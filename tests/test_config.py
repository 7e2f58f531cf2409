"""agents.config and agents.experiment: each option's limits and exact messages, the
types a config file may give, config files, and the defaults a run fills in from its data."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pytest

from agents.config import (
    GAMES,
    SelfPlayConfig,
    check_config,
    config_from_dict,
    dataclass_from_mapping,
    load_config_file,
    option,
)
from agents.experiment import fill_defaults, make_agents, make_game, make_split

# (option, values that work, a value that does not, the exact message for it)
LIMITS = [
    ("game", list(GAMES), "original-game", f"game must be one of {GAMES}, got 'original-game'"),
    ("backbone", ["small", "vgg16"], "vgg", "backbone must be small or vgg16, got 'vgg'"),
    ("loss", ["hinge", "ce"], "mse", "loss must be hinge or ce, got 'mse'"),
    ("score", ["dot", "cosine"], "l2", "score must be dot or cosine, got 'l2'"),
    ("lr_schedule", ["cosine", "constant"], "step", "lr_schedule must be cosine or constant"),
    ("image_size", [None, 8], 7, "image_size must be >= 8 (or unset)"),
    ("n_distractors", [None, 1], 0, "n_distractors must be >= 1"),
    ("lines", [1], 0, "lines must be >= 1"),
    ("curve_segments", [1, 4, 20], 0, "curve_segments must be >= 1"),
    ("curve_segments", [], 3, "lines (20) must be a multiple of curve_segments (3): the sender "
     "draws lines / curve_segments curves, e.g. --lines 80 --curve-segments 4"),
    ("sigma2", [None, 1e-12], 0.0, "sigma2 must be > 0 (or unset)"),
    ("epochs", [1], 0, "epochs must be >= 1"),
    ("batch_size", [1], 0, "batch_size must be >= 1"),
    ("lr", [1e-12, 1e12], 0.0, "lr must be a finite number > 0"),
    ("lr", [], math.inf, "lr must be a finite number > 0"),
    ("seed", [0, 2**63 - 1], -1, "seed must be >= 0 (and below 2**63)"),
    ("seed", [], 2**63, "seed must be >= 0 (and below 2**63)"),
    ("backbone_width", [1], 0, "backbone_width must be >= 1"),
    ("weight_decay", [0.0], -1e-9, "weight_decay must be >= 0"),
    ("warmup_steps", [0], -1, "warmup_steps must be >= 0"),
    ("grad_clip", [None, 0.0], -1e-9, "grad_clip must be >= 0 (0 or unset: off)"),
    ("perceptual_coef", [0.0, 1e12], -1e-9, "perceptual_coef must be a finite number >= 0"),
    ("perceptual_coef", [], math.inf, "perceptual_coef must be a finite number >= 0"),
    ("perceptual_weights", [None, [], [0.0, 1e12]], [1, -1e-9], "perceptual_weights must be "
     "finite numbers >= 0"),
    ("perceptual_weights", [], [math.inf], "perceptual_weights must be finite numbers >= 0"),
    ("perceptual_net", ["agents", "edges", "drawing", "vgg16", "vgg16:stylized",
                        "shapes-supervised-32"], "vgg19",
     "unknown perceptual_net 'vgg19': choose agents, edges, drawing, vgg16, vgg16:WEIGHTS, "
     "a weights file from python -m train.pretrain or a shipped name"),
    ("score_scale", [1.0], 0.999, "score_scale must be >= 1"),
    ("val_games", [1], 0, "val_games must be >= 1"),
    ("max_steps", [None, 1], 0, "max_steps must be >= 1 (or unset)"),
    ("threads", [0, 2], -1, "threads must be >= 0 (0 = torch's default), got -1"),
    ("time_budget", [None, 1e-9], 0.0, "time_budget must be > 0 (or unset)"),
    ("log_every", [1], 0, "log_every must be >= 1"),
    ("latent_size", [1], 0, "latent/receiver sizes must be >= 1"),
    ("receiver_out", [1], 0, "latent/receiver sizes must be >= 1"),
    ("sender_hidden", [[1], []], [4, 0], "hidden sizes >= 1"),
    ("receiver_hidden", [[1], []], [0], "hidden sizes >= 1"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "good", "bad", "message"), LIMITS, ids=lambda v: str(v)[:20])
def test_each_option_accepts_its_limit_and_refuses_beyond_it_by_name(name, good, bad, message):
    for value in good:
        assert getattr(config_from_dict({name: value}), name) == value
    with pytest.raises(ValueError) as refused:
        config_from_dict({name: bad})
    assert str(refused.value) == message


def test_the_defaults_pass_their_own_check():
    check_config(SelfPlayConfig())
    assert config_from_dict({}) == SelfPlayConfig()


def test_keys_may_be_spelt_with_dashes_and_replace_checks_the_result():
    config = config_from_dict({"n-distractors": 3, "batch_size": 7, "sender-hidden": [8]})
    assert (config.n_distractors, config.batch_size, config.sender_hidden) == (3, 7, [8])
    assert config.to_dict() == {**dataclasses.asdict(SelfPlayConfig()), "n_distractors": 3,
                                "batch_size": 7, "sender_hidden": [8]}  # fmt: skip
    assert config.replace(lines=5).lines == 5 and config.lines == 20
    with pytest.raises(ValueError, match=r"^lines must be >= 1$"):
        config.replace(lines=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": "fast"}, "config key 'lr' must be a number, got 'fast' (str)"),
        ({"lr": True}, "config key 'lr' must be a number, got True (bool)"),
        ({"epochs": 1.0}, "config key 'epochs' must be an integer, got 1.0 (float)"),
        ({"epochs": False}, "config key 'epochs' must be an integer, got False (bool)"),
        ({"image_size": 32.0},
         "config key 'image_size' must be an integer or null (unset), got 32.0 (float)"),
        ({"sigma2": "5e-4"},
         "config key 'sigma2' must be a number or null (unset), got '5e-4' (str)"),
        ({"sender_hidden": (4, "8")},
         "config key 'sender_hidden' must be a list of integers, got (4, '8') (tuple)"),
        ({"perceptual_weights": 1.0}, "config key 'perceptual_weights' must be a list of "
         "numbers or null (unset), got 1.0 (float)"),
        ({"invert": 1}, "config key 'invert' must be a boolean (true/false), got 1 (int)"),
        ({"dataset": None}, "config key 'dataset' must be a string, got None (NoneType)"),
        ({"zeta": 1, "alpha": 2},
         f"unknown config key(s) ['alpha', 'zeta']; known keys: "
         f"{sorted(f.name for f in dataclasses.fields(SelfPlayConfig))}"),
    ],
)  # fmt: skip
def test_values_of_the_wrong_type_are_refused_with_the_type_wanted(values, message):
    with pytest.raises(ValueError) as refused:
        config_from_dict(values)
    assert str(refused.value) == message


def test_values_as_json_and_toml_give_them_are_accepted():
    values = {"lr": 1, "sigma2": 2, "sender_hidden": (4, 8), "perceptual_weights": [1, 0.5],
              "weights": None, "amp": False, "grad_clip": None}  # fmt: skip
    config = config_from_dict(values)
    assert [getattr(config, k) for k in values] == list(values.values())


def test_option_is_a_field_with_its_help_and_its_own_copy_of_a_list():
    @dataclasses.dataclass
    class Options:
        sizes: list[int] = option([1, 2], "the sizes", "Model", choices=(1, 2))
        rate: float = option(0.5, "the rate", "Optimisation")

    first, second = Options(), Options()
    first.sizes.append(3)
    assert (second.sizes, second.rate) == ([1, 2], 0.5)
    meta = {f.name: dict(f.metadata) for f in dataclasses.fields(Options)}
    assert meta == {
        "sizes": {"help": "the sizes", "group": "Model", "choices": (1, 2)},
        "rate": {"help": "the rate", "group": "Optimisation"},
    }
    assert dataclass_from_mapping(Options, {"rate": 2}) == Options(rate=2)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_config_files_in_json_and_toml(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    text = '{"n-distractors": 3, "lr": 0.5}' if suffix == ".json" else "n-distractors = 3\nlr = 0.5"
    path.write_text(text)
    assert load_config_file(path) == {"n-distractors": 3, "lr": 0.5}
    assert load_config_file(str(path)) == {"n-distractors": 3, "lr": 0.5}


def test_bad_config_files_are_named_with_the_fix(tmp_path):
    def refusal(path, error=ValueError) -> str:
        with pytest.raises(error) as refused:
            load_config_file(path)
        return str(refused.value)

    assert refusal(tmp_path / "nope.json", FileNotFoundError) == (
        f"config file {str(tmp_path / 'nope.json')!r} not found"
    )
    (tmp_path / "run.yaml").write_text("lr: 1")
    assert refusal(tmp_path / "run.yaml") == (
        f"config file {str(tmp_path / 'run.yaml')!r} must end in .json or .toml"
    )
    (tmp_path / "list.json").write_text("[1, 2]")
    assert refusal(tmp_path / "list.json") == (
        f"config file {str(tmp_path / 'list.json')!r} must hold a table/object of options"
    )
    for name, text in (("bad.json", '{"lr": }'), ("bad.toml", "lr = = 1")):
        (tmp_path / name).write_text(text)
        assert refusal(tmp_path / name).startswith(
            f"could not parse config file {str(tmp_path / name)!r}: "
        )


def test_toml_files_use_the_tomli_backport_or_say_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "run.toml"
    path.write_text("lr = 0.5")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10
    backport = types.ModuleType("tomli")
    backport.loads = lambda text: {"read by": "tomli"}
    monkeypatch.setitem(sys.modules, "tomli", backport)
    assert load_config_file(path) == {"read by": "tomli"}
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ValueError) as refused:
        load_config_file(path)
    assert str(refused.value) == (
        "TOML config files need Python >= 3.11 or `pip install tomli`; or write the config as JSON"
    )
    path.with_suffix(".json").write_text('{"lr": 0.5}')  # JSON needs neither
    assert load_config_file(path.with_suffix(".json")) == {"lr": 0.5}


# ----- defaults filled in from the data (agents.experiment) --------------------------------
def test_unset_image_size_and_stroke_width_come_from_the_backbone_and_the_data():
    small = make_game(config_from_dict({}), "val")
    assert small.image_size == (32, 32) and small.sigma2 == pytest.approx(5e-4 * 9)
    sized = make_game(config_from_dict({"image_size": 48, "game": "oo-same"}), "val")
    assert (sized.image_size, sized.sigma2, sized.game) == ((48, 48), 5e-4 * 4, "oo-same")
    other = make_game(config_from_dict({"image_size": 48}), "val", game="oo-different")
    assert other.game == "oo-different"
    explicit = config_from_dict({"sigma2": 1e-3, "lines": 5, "n_distractors": 3, "seed": 4,
                                 "invert": False})  # fmt: skip
    game = make_game(explicit, "train")
    assert (game.sigma2, game.n_lines, game.n_distractors, game.invert) == (1e-3, 5, 3, False)
    # the seed draws the games: the same as a SketchGame seeded 4, not one seeded 0
    same = make_game(explicit, "train").sample_ids(4)[0]
    assert same.equal(game.sample_ids(4)[0])
    assert not same.equal(make_game(explicit.replace(seed=0), "train").sample_ids(4)[0])
    # vgg16 with no image size: the dataset's own (shapes draws 64 px by default)
    assert make_split(config_from_dict({"backbone": "vgg16"}), "val")[0][0].shape == (3, 64, 64)
    assert make_split(config_from_dict({}), "val")[0][0].shape == (3, 32, 32)


def test_the_seed_fixes_the_generated_images_and_the_games():
    def first_image(seed: int):
        return make_split(config_from_dict({"seed": seed}), "train")[0][0]

    assert first_image(0).equal(first_image(0)) and not first_image(0).equal(first_image(1))


def test_fill_defaults_saves_what_the_data_decided():
    shipped = make_game(config_from_dict({"image_size": 64}), "train")
    filled = fill_defaults(config_from_dict({}), shipped)
    assert (filled.image_size, filled.sigma2) == (64, shipped.sigma2)
    assert (filled.weights, filled.freeze_backbone) == ("shapes-supervised-64", True)
    unshipped = make_game(config_from_dict({"image_size": 48}), "train")  # no 48 px file
    assert (
        fill_defaults(config_from_dict({}), unshipped).weights,
        fill_defaults(config_from_dict({}), unshipped).freeze_backbone,
    ) == ("none", False)
    wide = fill_defaults(config_from_dict({"backbone_width": 8}), shipped)  # shipped: width 32
    assert (wide.weights, wide.freeze_backbone) == ("none", False)
    tuned = fill_defaults(config_from_dict({"freeze_backbone": False}), shipped)
    assert (tuned.weights, tuned.freeze_backbone) == ("shapes-supervised-64", False)
    kept = fill_defaults(config_from_dict({"weights": "none", "freeze_backbone": True}), shipped)
    assert (kept.weights, kept.freeze_backbone) == ("none", True)


def test_make_agents_builds_what_the_config_describes():
    config = config_from_dict({"lines": 3, "latent_size": 16, "sender_hidden": [8],
                               "receiver_hidden": [6], "receiver_out": 12, "score": "dot",
                               "weights": "none", "backbone_width": 4,
                               "separate_encoders": True, "freeze_backbone": True})  # fmt: skip
    sender, receiver = make_agents(config, (16, 24))
    assert sender.encoder.image_size == (16, 24) and sender.encoder.latent_size == 16
    assert [m.out_features for m in sender.decoder if hasattr(m, "out_features")] == [8, 12]
    assert [m.out_features for m in receiver.head if hasattr(m, "out_features")] == [6, 12]
    assert receiver.score_kind == "dot" and receiver.encoder is not sender.encoder
    assert not any(p.requires_grad for p in sender.encoder.backbone.parameters())


def test_a_type_without_a_plain_name_is_described_by_its_class_name():
    @dataclasses.dataclass
    class Raw:
        data: bytes = b""

    with pytest.raises(ValueError) as refused:
        dataclass_from_mapping(Raw, {"data": "text"})
    assert str(refused.value) == "config key 'data' must be a bytes, got 'text' (str)"


def test_the_default_split_is_train(tmp_path):
    config = config_from_dict({})
    assert make_split(config)[0][0].equal(make_split(config, "train")[0][0])
    assert make_game(config).sample_ids(3)[1].equal(make_game(config, "train").sample_ids(3)[1])
    assert len(make_game(config).labels) != len(make_game(config, "val").labels)


class Photos:
    """A dataset with no ``image_size`` attribute, of 16 x 24 images (as a user's own)."""

    classes = ("a", "b")

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        import torch

        return torch.full((3, 16, 24), index / 8), index % 2


def test_photos_that_are_not_square_keep_their_size_and_stroke_width_of_the_short_side(
    monkeypatch,
):
    import agents.experiment as experiment

    monkeypatch.setattr(experiment, "make_dataset", lambda *args, **kwargs: Photos())
    config = config_from_dict({"backbone": "vgg16", "n_distractors": 1})
    game = make_game(config)
    assert game.image_size == (16, 24) and game.sigma2 == pytest.approx(5e-4 * 36)
    filled = fill_defaults(config, game)
    assert (filled.image_size, filled.weights, filled.freeze_backbone) == (None, "imagenet", True)


def test_the_data_root_and_download_flags_reach_the_dataset(tmp_path, monkeypatch):
    from fakedata import write_cifar10

    import sketchenv.datasets.cifar10 as cifar10

    write_cifar10(tmp_path / "here")
    config = config_from_dict({"dataset": "cifar10", "data_root": str(tmp_path / "here")})
    count = len(make_split(config, "val"))
    fetched = []

    def download(url, download_root, **kwargs):  # what torchvision would fetch
        fetched.append(url)
        write_cifar10(tmp_path / "empty")

    monkeypatch.setattr(cifar10, "download_and_extract_archive", download)
    config = config.replace(data_root=str(tmp_path / "empty"), download=True)
    assert len(make_split(config, "val")) == count and len(fetched) == 1


def test_make_agents_reads_the_pretrained_weights_unless_told_not_to(tmp_path):
    from agents.backbones import read_weights

    config = config_from_dict({"weights": "shapes-supervised-32", "lines": 2})
    shipped, _ = read_weights("shapes-supervised-32")
    sender, _ = make_agents(config, (32, 32))
    state = sender.encoder.backbone.features.state_dict()
    assert all(state[k].equal(v) for k, v in shipped.items())
    blank, _ = make_agents(config, (32, 32), load_weights=False)
    state = blank.encoder.backbone.features.state_dict()
    assert not all(state[k].equal(v) for k, v in shipped.items())


def test_make_agents_passes_the_backbone_score_and_its_scale():
    import torch

    config = config_from_dict({"score": "cosine", "score_scale": 5.0, "lines": 2})
    _, receiver = make_agents(config, (32, 32), load_weights=False)
    assert receiver.score_kind == "cosine"
    assert receiver.log_scale.item() == pytest.approx(math.log(5.0))
    vgg = config_from_dict({"backbone": "vgg16", "weights": "none", "lines": 2})
    sender, _ = make_agents(vgg, (32, 32))
    assert sender.encoder.backbone.name == "vgg16"
    assert sender(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 4)
