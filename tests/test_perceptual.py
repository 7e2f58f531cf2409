"""--perceptual-net: every network's loss reaches the strokes and never the network;
the fixed edge network reads outlines, not colours."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from agents.backbones import make_backbone, save_weights
from agents.edges import EdgeNet
from agents.losses import perceptual_loss
from agents.perceptual import make_perceptual_net
from sketchenv.raster import render_strokes, to_rgb

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("perceptual")
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), root / "vgg.pth")
    info = {"method": "barlow", "dataset": "shapes", "image_size": [32, 32], "width": 4}
    save_weights(root / "small.pt", make_backbone("small", "none", width=4), info)
    return {"vgg": str(root / "vgg.pth"), "small": str(root / "small.pt")}


@pytest.mark.parametrize("spec", ["agents", "edges", "vgg16:FILE", "weights file"])
def test_gradients_reach_the_strokes_and_not_the_network(spec, weight_files):
    agents_backbone = make_backbone("small", "none", width=4)
    spec = {
        "vgg16:FILE": f"vgg16:{weight_files['vgg']}",
        "weights file": weight_files["small"],
    }.get(spec, spec)
    net = make_perceptual_net(spec, agents_backbone, (32, 32))
    strokes = torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    strokes.requires_grad_(True)
    sketches = to_rgb(render_strokes(strokes, 32, sigma2=5e-3))
    images = torch.rand(2, 3, 32, 32)
    loss = perceptual_loss(net, images, sketches, [1.0] * len(net.tap_names))
    loss.backward()
    assert loss.item() > 0 and strokes.grad is not None and strokes.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is None for p in agents_backbone.parameters())


def test_perceptual_net_choices_are_checked(weight_files, monkeypatch, tmp_path):
    backbone = make_backbone("small", "none", width=4)
    assert make_perceptual_net("agents", backbone, (32, 32)) is backbone
    assert isinstance(make_perceptual_net("edges", backbone, (32, 32)), EdgeNet)
    with pytest.raises(ValueError, match="unknown --perceptual-net 'alexnet'"):
        make_perceptual_net("alexnet", backbone, (32, 32))
    with pytest.raises(ValueError, match="vgg16:FILE"):
        make_perceptual_net(weight_files["vgg"], backbone, (32, 32))
    with pytest.raises(ValueError, match="image_size"):
        make_perceptual_net(weight_files["small"], backbone, (64, 64))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached copy
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConnectionError, match="--perceptual-net vgg16:/path/to/vgg16"):
        make_perceptual_net("vgg16", backbone, (32, 32))


def test_edge_network_sees_outlines_whatever_their_colour_and_polarity():
    net = EdgeNet()
    image = torch.zeros(1, 3, 32, 32)
    image[..., 8:24, 8:24] = torch.tensor([0.9, 0.4, 0.1]).view(1, 3, 1, 1)  # orange square
    maps = net(image)
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4] and all(m.shape[1] == 4 for m in maps)
    inverse = net(1 - image)  # the same outline, light on dark instead of dark on light
    for a, b in zip(maps, inverse, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    flat = net(torch.full((1, 3, 32, 32), 0.3))[0]
    assert flat[:, :3].abs().max() < 1e-6 and flat[:, 3].min() > 0  # only the constant channel
    # A vertical edge has x-gradients only (Jxx > Jyy); a horizontal one the opposite sign.
    vertical = torch.zeros(1, 3, 32, 32)
    vertical[..., :, 16:] = 1
    horizontal = vertical.transpose(-1, -2)
    level0 = (
        net(vertical, ["scale0"])[0][0, 0, 16, 16],
        net(horizontal, ["scale0"])[0][0, 0, 16, 16],
    )
    assert level0[0] > 0.5 and level0[1] < -0.5
    with pytest.raises(ValueError, match="unknown taps"):
        net(image, ["relu1"])
