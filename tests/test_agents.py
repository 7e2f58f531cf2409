"""agents/: backbones and weights, models, losses, one training step, checkpoints."""

from __future__ import annotations

import math
import re
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from agents.backbones import VGG16_TAPS, make_backbone
from agents.checkpoint import CheckpointError, load_run, read_checkpoint, save_checkpoint
from agents.config import SelfPlayConfig
from agents.losses import game_loss, perceptual_distance, perceptual_loss
from agents.models import Receiver, Sender, build_agents, quadratic_segments
from agents.trainer import play, train_step
from sketchenv.game import SketchGame


class Blobs(torch.utils.data.Dataset):
    """``n`` random 16 px images with one bright square each, two classes."""

    def __init__(self, n: int = 10, size: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.3
        for i in range(n):
            x, y = torch.randint(0, size - 5, (2,), generator=g).tolist()
            self.images[i, :, y : y + 5, x : x + 5] = torch.rand(3, 1, 1, generator=g)
        self.labels = [i % 2 for i in range(n)]
        self.classes = ["a", "b"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


class LineSender(nn.Module):
    """A plug-in sender: a linear map of 16 px pixels to 4 strokes."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4 * 4), nn.Tanh())

    def forward(self, images):  # [N, 3, H, W] -> [N, n_lines, 4]
        return self.net(images).view(-1, 4, 4)


class PixelReceiver(nn.Module):
    """A plug-in receiver: dot products of linear embeddings of the pixels."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Flatten(2), nn.Linear(3 * 16 * 16, 8))

    def forward(self, sketches, candidates):  # [B, G, ...], [B, C, ...] -> [B, G, C]
        return self.embed(sketches) @ self.embed(candidates).transpose(1, 2)


def tiny_agents(**options) -> tuple[Sender, Receiver]:
    kw = {"image_size": (16, 16), "n_lines": 4, "backbone_width": 8, "score": "cosine"}
    return build_agents(**(kw | options))


def unique_params(*modules: nn.Module) -> list[nn.Parameter]:
    return list(nn.ModuleDict({str(i): m for i, m in enumerate(modules)}).parameters())


# ----- curves ----------------------------------------------------------------------------


def test_quadratic_segments_are_chained_chords_of_the_curve_within_their_bound():
    arch = [[-1.0, -1.0], [0.0, 1.0], [1.0, -1.0]]
    straight = [[-0.5, 0.2], [0.0, 0.2], [0.5, 0.2]]  # evenly paced along a line
    controls = torch.tensor([arch, straight])
    chords = quadratic_segments(controls, 4).view(2, 4, 4)
    torch.testing.assert_close(chords[:, 1:, :2], chords[:, :-1, 2:])  # each starts where one ends
    torch.testing.assert_close(chords[:, 0, :2], controls[:, 0])
    torch.testing.assert_close(chords[:, -1, 2:], controls[:, 2])
    # B(t) = (1-t)² P0 + 2(1-t)t P1 + t² P2: B(1/4) = (-1/2, -1/4), B(1/2) = (0, 0)
    torch.testing.assert_close(chords[0, 0, 2:], torch.tensor([-0.5, -0.25]))
    torch.testing.assert_close(chords[0, 1, 2:], torch.tensor([0.0, 0.0]))
    x = torch.linspace(-0.5, 0.5, 5)
    torch.testing.assert_close(
        chords[1], torch.stack([x[:-1], 0.2 + 0 * x[:-1], x[1:], 0.2 + 0 * x[1:]], 1)
    )
    assert torch.equal(quadratic_segments(controls, 1), controls[:, [0, 2]].reshape(2, 4))
    # Distance from the true curve (dense samples) to the chords: at most |P0 - 2P1 + P2| / 4k²
    t = torch.linspace(0, 1, 2001).view(-1, 1)
    p0, p1, p2 = controls[0]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    a, b = chords[0, :, :2], chords[0, :, 2:]
    s = (((curve[:, None] - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1)).clamp(0, 1)
    gap = (curve[:, None] - (a + s[..., None] * (b - a))).norm(dim=-1).min(dim=1).values.max()
    bound = (p0 - 2 * p1 + p2).norm() / (4 * 4**2)
    assert 0.5 * bound < gap <= bound + 1e-6


def test_a_curve_sender_draws_chained_curves_and_refuses_a_count_that_does_not_divide():
    torch.manual_seed(0)
    sender, _ = tiny_agents(n_lines=8, curve_segments=4)
    assert sender.decoder[-1].out_features == 2 * 6  # two curves of three points
    strokes = sender(torch.rand(3, 3, 16, 16)).view(3, 2, 4, 4)
    assert strokes.abs().max() <= 1
    torch.testing.assert_close(strokes[:, :, 1:, :2], strokes[:, :, :-1, 2:])
    assert not torch.allclose(strokes[:, 0, -1, 2:], strokes[:, 1, 0, :2])  # two curves
    assert tiny_agents(n_lines=8)[0].decoder[-1].out_features == 8 * 4
    with pytest.raises(ValueError) as err:
        tiny_agents(n_lines=6, curve_segments=4)
    assert str(err.value) == (
        "n_lines (6) must be a multiple of curve_segments (4): the sender draws "
        "n_lines / curve_segments curves"
    )


# ----- losses --------------------------------------------------------------------------


def test_hinge_and_cross_entropy_match_hand_computed_values():
    scores = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 3.0, -1.0]]])  # [B=1, G=2, C=3]
    targets = torch.tensor([[0, 1]])
    # game 0: (max(0, 1 - 1 + 2) + max(0, 1 - 1 + 0.5)) / 3; game 1: (max(0, 1-3+0) + 0) / 3
    assert game_loss(scores, targets, "hinge").item() == pytest.approx((2.5 / 3 + 0.0) / 2)
    assert game_loss(scores, targets).item() == game_loss(scores, targets, "hinge").item()
    ce0 = -1.0 + math.log(math.exp(1) + math.exp(2) + math.exp(0.5))
    ce1 = -3.0 + math.log(math.exp(0) + math.exp(3) + math.exp(-1))
    assert game_loss(scores, targets, "ce").item() == pytest.approx((ce0 + ce1) / 2)
    with pytest.raises(ValueError, match="unknown loss"):
        game_loss(scores, targets, "mse")


def test_perceptual_distance_matches_hand_computed_value():
    # Layer 1, two positions: (3,4)->(.6,.8) vs (1,0): .16+.64 = .8; (0,2) vs (0,5): 0 -> mean .4
    a1 = torch.tensor([[3.0, 0.0], [4.0, 2.0]]).view(1, 2, 1, 2)
    b1 = torch.tensor([[1.0, 0.0], [0.0, 5.0]]).view(1, 2, 1, 2)
    # Layer 2, one channel: 2 -> 1 vs -3 -> -1: (1 - -1)^2 = 4
    a2, b2 = torch.tensor(2.0).view(1, 1, 1, 1), torch.tensor(-3.0).view(1, 1, 1, 1)
    value = perceptual_distance([a1, a2], [b1, b2], [1.0, 0.5])
    assert value.shape == (1,)
    assert value.item() == pytest.approx(0.4 + 0.5 * 4.0)


def test_perceptual_distance_equals_the_direct_form_for_tiny_and_zero_features():
    """The expanded form against |a/(|a|+eps) - b/(|b|+eps)|^2, also where a norm is near
    the 1e-10 guard (1e-6, where the guard shifts the result by 1e-4) or exactly zero."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    a[0, :, 0, 0], b[0, :, 0, 1], b[1, :, 1, 1] = 1e-6 * a[0, :, 0, 0], 1e-6, 0.0
    a64, b64 = a.double(), b.double()
    direct = (
        (
            a64 / (a64.norm(dim=1, keepdim=True) + 1e-10)
            - b64 / (b64.norm(dim=1, keepdim=True) + 1e-10)
        )
        .pow(2)
        .sum(dim=1)
        .mean(dim=(1, 2))
    )
    value = perceptual_distance([a64], [b64], [1.0])
    torch.testing.assert_close(value, direct, rtol=1e-9, atol=0)
    torch.testing.assert_close(perceptual_distance([a], [b], [1.0]).double(), direct)


def test_perceptual_loss_trains_sketches_not_the_backbone():
    backbone = make_backbone("small", width=4)
    images = torch.rand(2, 3, 16, 16)
    sketches = torch.rand(2, 3, 16, 16, requires_grad=True)
    weights = [0.0, 1.0, 0.0, 0.0, 2.0]
    loss = perceptual_loss(backbone, images, sketches, weights)
    taps_a = backbone(images, taps=["relu2", "relu5"])
    taps_b = backbone(sketches, taps=["relu2", "relu5"])
    expected = perceptual_distance(taps_a, taps_b, [1.0, 2.0]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert sketches.grad is not None and sketches.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())
    with pytest.raises(ValueError, match="needs 5 values"):
        perceptual_loss(backbone, images, sketches, [1.0, 1.0])


def test_perceptual_distance_per_image_normalises_over_channels_only():
    """Two images, feature maps of 2 channels at 2 x 3 positions: each position is
    unit-normalised over channels alone, and every image keeps its own distance."""
    a = torch.zeros(2, 2, 2, 3)
    b = torch.zeros(2, 2, 2, 3)
    a[:, 0], b[:, 1] = 2.0, 3.0  # image 0 and 1: orthogonal unit vectors everywhere: 2
    b[1, 1, 0, :], b[1, 0, 0, :] = 0.0, 5.0  # image 1, first row: identical directions: 0
    value = perceptual_distance([a], [b], [3.0])
    assert value.tolist() == pytest.approx([3.0 * 2.0, 3.0 * (2.0 * 3 / 6)])
    with pytest.raises(
        ValueError, match=r"^perceptual_distance needs one weight per pair of feature maps$"
    ):
        perceptual_distance([a], [b], [1.0, 2.0])


def test_perceptual_loss_uses_a_networks_reference_and_distance():
    """A loss network may compare sketches with ``reference(images)`` and measure with its
    own ``distance`` (the drawing network does both); all-zero weights give a zero scalar."""
    backbone = make_backbone("small", width=4)
    images, sketches = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    plain = perceptual_loss(backbone, 1 - images, sketches, [1.0] * 5).item()
    backbone.reference = lambda x: 1 - x  # compare the sketches with the inverted images
    assert perceptual_loss(backbone, images, sketches, [1.0] * 5).item() == pytest.approx(plain)
    weights_seen = []
    backbone.distance = lambda a, b, w: weights_seen.append(w) or torch.full((2,), 7.0)
    assert perceptual_loss(backbone, images, sketches, [0.0, 1.0, 0.0, 2.0, 3.0]).item() == 7.0
    assert weights_seen == [(1.0, 2.0, 3.0)]  # the taps weighted 0 are skipped
    zero = perceptual_loss(backbone, images, sketches, [0.0] * 5)
    assert zero.shape == () and zero.item() == 0.0


# ----- backbones and weights -----------------------------------------------------------


def test_backbone_taps_and_normalisation():
    small = make_backbone("small", width=4)
    assert small.tap_names == ("relu1", "relu2", "relu3", "relu4", "relu5")
    x = torch.rand(2, 3, 32, 32)
    relu3, relu1 = small(x, taps=["relu3", "relu1"])
    assert relu1.shape == (2, 4, 32, 32) and relu3.shape == (2, 8, 8, 8)
    assert torch.equal(small(x), small(x, taps=["relu5"])[0])
    with pytest.raises(ValueError, match="unknown or no taps"):
        small(x, taps=["relu9"])
    assert small.normalisation == "centre"
    vgg = make_backbone("vgg16", "none")
    assert vgg.tap_names == tuple(VGG16_TAPS) and vgg.normalisation == "centre"
    assert vgg.output_shape((32, 32)) == (512, 2, 2)
    with pytest.raises(ValueError, match="only for --backbone vgg16"):
        make_backbone("small", "imagenet")


@pytest.fixture(scope="module")
def vgg_features_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).features.state_dict()


def test_vgg16_state_dict_with_module_prefixes_loads(tmp_path, vgg_features_state):
    wrapped = {f"module.features.{k}": v for k, v in vgg_features_state.items()}
    wrapped["module.classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    torch.save(wrapped, tmp_path / "dataparallel.pth")
    # Stylized-ImageNet's layout: {"state_dict": {"features.module.0.weight": ...}}
    sin = {"state_dict": {f"features.module.{k}": v for k, v in vgg_features_state.items()}}
    torch.save(sin, tmp_path / "sin.pth.tar")
    for spec in (str(tmp_path / "dataparallel.pth"), f"stylized:{tmp_path / 'sin.pth.tar'}"):
        backbone = make_backbone("vgg16", spec)
        assert backbone.normalisation == "imagenet"
        for key, value in backbone.features.state_dict().items():
            assert torch.equal(value, vgg_features_state[key]), key


def test_bad_weights_give_clear_errors(tmp_path, monkeypatch):
    torch.save({"module.features.0.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="do not fit backbone 'vgg16'"):
        make_backbone("vgg16", str(tmp_path / "wrong.pth"))
    with pytest.raises(FileNotFoundError, match="not found"):
        make_backbone("vgg16", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="stylized:PATH_OR_URL"):
        make_backbone("vgg16", "stylized")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached copy
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConnectionError, match=re.escape("--weights /path/to/vgg16-397923af.pth")):
        make_backbone("vgg16", "imagenet")


# ----- models --------------------------------------------------------------------------


def test_shared_and_separate_encoders_have_the_expected_parameters():
    sender, receiver = tiny_agents()
    assert sender.encoder is receiver.encoder
    shared = {id(p) for p in unique_params(sender, receiver)}
    encoder = {id(p) for p in sender.encoder.parameters()}
    heads = {id(p) for p in [*sender.decoder.parameters(), *receiver.head.parameters()]}
    assert shared == encoder | heads | {id(receiver.log_scale)}

    sender, receiver = tiny_agents(separate_encoders=True)
    s_enc = {id(p) for p in sender.encoder.parameters()}
    r_enc = {id(p) for p in receiver.encoder.parameters()}
    assert s_enc and r_enc and not (s_enc & r_enc)
    n_encoder = sum(p.numel() for p in sender.encoder.parameters())
    n_shared = sum(p.numel() for p in unique_params(*tiny_agents()))
    n_separate = sum(p.numel() for p in unique_params(sender, receiver))
    assert n_separate == n_shared + n_encoder


def test_paper_head_sizes_and_interface_shapes():
    sender, receiver = tiny_agents(score="dot")
    linear = [m for m in sender.decoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 64), (64, 256), (256, 16)]
    linear = [m for m in receiver.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 64), (64, 64)]
    strokes = sender(torch.rand(5, 3, 16, 16))
    assert strokes.shape == (5, 4, 4) and strokes.abs().max() <= 1
    scores = receiver(torch.rand(2, 3, 3, 16, 16), torch.rand(2, 4, 3, 16, 16))
    assert scores.shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"expects images \[..., 3, 16, 16\]"):
        sender(torch.rand(5, 3, 32, 32))


# ----- training ------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Tiny tensors run faster on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_fixed_batch_is_learned_to_full_communication(one_thread):
    torch.manual_seed(0)
    game = SketchGame(Blobs(10), "original", n_distractors=9, n_lines=4, sigma2=5e-3)
    batch = game.sample(1, torch.Generator().manual_seed(0))
    sender, receiver = tiny_agents()
    params = unique_params(sender, receiver)
    optimizer = torch.optim.Adam(params, lr=3e-3)
    rates = []
    for _ in range(400):  # typically done in about 120 steps
        _, stats = train_step(
            sender, receiver, game, batch, optimizer, params=params, grad_clip=1.0
        )
        rates.append(stats["comm_rate"])
        if rates[-3:] == [1.0] * 3:
            break
    assert rates[-3:] == [1.0] * 3, f"last rates {rates[-5:]}"
    assert rates[0] < 0.5


def test_frozen_backbone_is_unchanged_by_training():
    game = SketchGame(Blobs(10), "original", n_distractors=4, n_lines=4)
    sender, receiver = tiny_agents(freeze_backbone=True)
    frozen = {k: v.clone() for k, v in sender.encoder.backbone.state_dict().items()}
    projection = sender.encoder.projection.weight.clone()
    params = [p for p in unique_params(sender, receiver) if p.requires_grad]
    assert not any(p.requires_grad for p in sender.encoder.backbone.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        train_step(
            sender, receiver, game, game.sample(2), optimizer, params=params,
            perceptual_net=sender.encoder.backbone, perceptual_weights=[1.0] * 5,
            perceptual_coef=1.0,
        )  # fmt: skip
    for key, value in sender.encoder.backbone.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert not torch.equal(sender.encoder.projection.weight, projection)


def test_custom_agents_plug_in():
    """Any callables with the documented shapes train through the same step."""

    game = SketchGame(Blobs(10), "oo-same", n_lines=4)
    sender, receiver = LineSender(), PixelReceiver()
    params = unique_params(sender, receiver)
    before = [p.clone() for p in params]
    outcome, stats = train_step(
        sender, receiver, game, game.sample(3), torch.optim.SGD(params, lr=0.1), params=params
    )
    assert outcome.scores.shape == (3, 2, 2) and outcome.sketches.shape == (3, 2, 3, 16, 16)
    assert 0 <= stats["comm_rate"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_shared_encoder_reuses_candidate_features_exactly():
    """The fast path (candidates encoded once) gives the same scores as the plain interface."""
    game = SketchGame(Blobs(10), "original", n_distractors=4, n_lines=4)
    batch = game.sample(2)
    sender, receiver = tiny_agents()
    fast = play(sender, receiver, game, batch)
    strokes = sender(batch.sender_images.flatten(0, 1)).view(2, 5, 4, 4)
    slow = receiver(game.render(strokes), batch.candidates)
    torch.testing.assert_close(fast.scores, slow)


# ----- checkpoints ---------------------------------------------------------------------


def tiny_checkpoint(path, **config_changes):
    paper_heads = {"latent_size": 64, "sender_hidden": [64, 256]}  # build_agents' defaults
    config = SelfPlayConfig(
        dataset="shapes", image_size=16, lines=4, backbone_width=8, **paper_heads, **config_changes
    )
    sender, receiver = tiny_agents(n_lines=config.lines)
    game = {"image_size": [16, 16], "game": "original", "n_lines": config.lines}
    save_checkpoint(
        path,
        {"config": config.to_dict(), "game": game, "sender": sender.state_dict(),
         "receiver": receiver.state_dict()},
    )  # fmt: skip
    return sender


def test_checkpoint_round_trip(tmp_path):
    sender = tiny_checkpoint(tmp_path / "last.pt")
    run = load_run(tmp_path)  # a run directory: best.pt, else last.pt
    assert run.path.endswith("last.pt") and run.config.lines == 4
    images = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(run.sender(images), sender.eval()(images))


def test_checkpoint_with_flipped_bytes_is_refused(tmp_path):
    tiny_checkpoint(tmp_path / "good.pt")
    data = bytearray((tmp_path / "good.pt").read_bytes())
    weights = read_checkpoint(tmp_path / "good.pt")["sender"]
    raw = next(iter(weights.values())).numpy().tobytes()
    at = data.find(raw)
    assert at > 0  # torch stores tensor bytes uncompressed: flip one bit of a weight
    data[at + 5] ^= 0x40
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    assert not torch.equal(  # the file still loads, with a different weight...
        next(iter(torch.load(tmp_path / "flipped.pt", weights_only=True)["sender"].values())),
        next(iter(weights.values())),
    )
    with pytest.raises(CheckpointError, match=r"flipped\.pt was altered or damaged"):
        read_checkpoint(tmp_path / "flipped.pt")  # ...but its recorded digest no longer fits


def test_corrupt_or_mismatched_checkpoints_give_clear_errors(tmp_path):
    tiny_checkpoint(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_run(tmp_path / "garbage.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="not a sketchenv self-play checkpoint"):
        load_run(tmp_path / "weights.pt")
    # Weights for 4 strokes under a config that says 5: the sender's output layer differs.
    payload = read_checkpoint(tmp_path / "good.pt")
    payload["config"]["lines"] = 5
    save_checkpoint(tmp_path / "mismatch.pt", payload)
    with pytest.raises(CheckpointError, match="sender weights do not fit"):
        load_run(tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_run(tmp_path / "empty")


def test_squash_strokes_keeps_every_column_in_its_range_and_starts_drawn_and_dark():
    from agents.models import squash_strokes
    from sketchenv.strokes import StrokeFormat

    stroke_format = StrokeFormat.parse("quadratic+width+opacity+colour")
    raw = torch.cat([torch.full((1, 11), -1e4), torch.zeros(1, 11), torch.full((1, 11), 1e4)])
    strokes = squash_strokes(raw[:, None], stroke_format)[:, 0]  # [3 rows, 11 columns]
    low, high = (torch.from_numpy(b) for b in stroke_format.bounds())
    torch.testing.assert_close(strokes[0], low)
    torch.testing.assert_close(strokes[2], high)
    middle = strokes[1].tolist()
    assert middle[:6] == [0.0] * 6 and middle[6] == 1.0  # centred points, width x1
    assert middle[7] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())  # drawn
    assert middle[8:] == pytest.approx([torch.sigmoid(torch.tensor(-2.0)).item()] * 3)  # dark


def test_drawing_costs_by_hand():
    from agents.losses import drawing_cost
    from sketchenv.strokes import StrokeFormat

    opaque = StrokeFormat("line", opacity=True)
    strokes = torch.zeros(2, 3, 5)
    strokes[..., 4] = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.25]])
    sketches = torch.ones(2, 3, 4, 4)
    sketches[0, :, 0, 0] = 0.0  # one black pixel of 16 on white paper
    sqrt_count = (1 + 0.5**0.5 + 0.5) / 6  # opacities 1, 0.5, 0, 0, 0, 0.25
    assert drawing_cost(strokes, sketches, opaque, "strokes", 1.0).item() == pytest.approx(
        sqrt_count, abs=1e-4
    )
    assert drawing_cost(strokes, sketches, opaque, "ink", 1.0).item() == pytest.approx(1 / 32)
    assert drawing_cost(strokes, 1 - sketches, opaque, "ink", 0.0).item() == pytest.approx(1 / 32)
    with pytest.raises(ValueError, match="the 'strokes' drawing cost needs strokes with opacity"):
        drawing_cost(strokes[..., :4], sketches, StrokeFormat(), "strokes", 1.0)
    with pytest.raises(ValueError, match="unknown drawing cost 'time'"):
        drawing_cost(strokes, sketches, opaque, "time", 1.0)


def test_the_drawing_cost_teaches_the_sender_to_leave_strokes_out():
    """A GameLoss whose only incentive is the strokes cost lowers every opacity."""
    from agents.trainer import GameLoss

    game = SketchGame(Blobs(8), "original", n_distractors=3, n_lines=4,
                      stroke_format="line+opacity")  # fmt: skip
    sender, receiver = build_agents(image_size=(16, 16), n_lines=4, backbone_width=4,
                                    stroke_format="line+opacity")  # fmt: skip
    model = GameLoss(sender, receiver, game, drawing_cost=100.0, drawing_cost_kind="strokes")
    batch = next(iter(game.epoch(2, torch.Generator().manual_seed(0))))
    before = sender(batch.sender_images)[..., 4].mean().item()
    optimizer = torch.optim.SGD(sender.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        loss, _, stats = model(batch)
        loss.backward()
        optimizer.step()
    assert stats["loss/drawing"] > 0 and stats["loss/total"] > stats["loss/game"]
    assert sender(batch.sender_images)[..., 4].mean().item() < before - 0.05
