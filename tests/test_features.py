"""agents/features.py and the trainer's fast paths for a frozen backbone: the feature cache
and the perceptual loss fused into the receiver's passes change no value, only how often
the backbone runs (checked step for step against the plain paths)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_agents import tiny_agents
from test_selfplay import folder, tiny_args, weights  # noqa: F401 (folder is a fixture)
from test_trainer import blob_game

from agents.features import FeatureCache
from agents.perceptual import default_tap_weights
from agents.trainer import GameLoss, update
from train import selfplay

pytestmark = pytest.mark.usefixtures("one_thread")


def images_seen(module: torch.nn.Module) -> list[int]:
    """A list that collects the batch size of each of the module's forward calls."""
    sizes: list[int] = []
    module.register_forward_hook(lambda _m, args, _out: sizes.append(len(args[0])))
    return sizes


def frozen_backbone():
    sender, _ = tiny_agents(freeze_backbone=True)
    return sender.encoder.backbone


# ----- the cache -----------------------------------------------------------------------


def test_cache_gives_the_backbones_maps_and_encodes_each_image_once():
    torch.manual_seed(0)
    backbone, game = frozen_backbone(), blob_game()
    cache = FeatureCache(backbone, len(game.labels), (16, 16), 10**8, chunk=4)
    seen = images_seen(backbone)
    ids = torch.tensor([3, 7, 3, 0, 11, 7])
    images = torch.stack([game.dataset[int(i)][0] for i in ids])
    maps = cache(ids, images)
    torch.testing.assert_close(maps, backbone(images), rtol=1e-5, atol=1e-6)
    assert seen[:-1] == [4]  # 4 new images in one padded chunk of 4 (then the check's call)
    assert cache.known.sum() == 4 and cache.maps.shape == (12, *backbone.output_shape((16, 16)))

    seen.clear()
    again = cache(ids.flip(0), images.flip(0))
    assert seen == [] and torch.equal(again, maps.flip(0))  # all known: no backbone call
    more = cache(
        torch.tensor([1, 3, 2, 5, 6, 8]),
        torch.stack([game.dataset[i][0] for i in (1, 3, 2, 5, 6, 8)]),
    )
    assert seen == [4, 4] and torch.equal(more[1], maps[0])  # 5 new: chunks of 4 and 1 (padded)


def test_an_images_features_do_not_depend_on_which_images_were_new_with_it():
    torch.manual_seed(0)
    backbone, game = frozen_backbone(), blob_game()
    image = {i: game.dataset[i][0] for i in range(12)}
    a = FeatureCache(backbone, 12, (16, 16), 10**8, chunk=3)
    b = FeatureCache(backbone, 12, (16, 16), 10**8, chunk=3)
    first = a(torch.tensor([2, 9]), torch.stack([image[2], image[9]]))
    second = b(torch.tensor([5, 2, 0]), torch.stack([image[5], image[2], image[0]]))
    assert torch.equal(first[0], second[1])


def test_cache_refuses_a_trainable_backbone_and_is_off_when_too_big():
    sender, _ = tiny_agents()
    with pytest.raises(ValueError, match="needs a frozen backbone"):
        FeatureCache(sender.encoder.backbone, 12, (16, 16), 10**8)

    backbone, game = frozen_backbone(), blob_game()
    per_image = FeatureCache(backbone, 1, (16, 16), 0).bytes
    cache = FeatureCache(backbone, 12, (16, 16), 12 * per_image - 1)
    assert not cache.enabled
    assert cache.describe().startswith("feature cache off: 12 images' features need")
    assert "--feature-cache-mb" in cache.describe()
    seen, images = images_seen(backbone), torch.stack([game.dataset[i][0] for i in (0, 1)])
    for _ in range(2):  # computed at every call, nothing kept
        torch.testing.assert_close(cache(torch.tensor([0, 1]), images), backbone(images))
    assert seen == [2, 2, 2, 2] and cache.maps is None
    assert FeatureCache(backbone, 12, (16, 16), 12 * per_image).enabled


# ----- training with the fast paths equals training without them ------------------------


def train_side_by_side(fast: GameLoss, plain: GameLoss, game, steps: int = 4) -> None:
    """``steps`` SGD steps of both models on the same batches: equal losses and weights
    (SGD, as Adam would blow rounding differences of near-zero gradients up to lr)."""
    optimizers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        for m in (fast, plain)
    ]
    for step in range(steps):
        batch = game.sample(2, torch.Generator().manual_seed(step))
        results = [
            update(m, batch, o, params=[p for p in m.parameters() if p.requires_grad])[1]
            for m, o in zip((fast, plain), optimizers, strict=True)
        ]
        assert results[0] == pytest.approx(results[1], rel=1e-4, abs=1e-6), step
        for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["original", "oo-different"])
def test_training_with_the_feature_cache_equals_training_without(variant):
    torch.manual_seed(0)
    game = blob_game(variant)
    sender, receiver = tiny_agents(freeze_backbone=True)
    plain = GameLoss(*copy.deepcopy((sender, receiver)), game)
    backbone = receiver.encoder.backbone
    cache = FeatureCache(backbone, len(game.labels), game.image_size, 10**8, chunk=5)
    fast = GameLoss(sender, receiver, game, features=cache)
    seen = images_seen(backbone)
    train_side_by_side(fast, plain, game)
    assert cache.known.sum() >= 10  # the images met, each encoded once (see above)
    # Beside the cache's chunks of 5, only the sketches (and oo-different's senders'
    # images, which are not candidates) went through the backbone, 2 blocks per step.
    games = 2 * game.n_candidates
    assert games != 5 and [n for n in seen if n != 5] == [games] * 4 * (1 + (variant != "original"))


@pytest.mark.parametrize("variant", ["original", "oo-different"])
def test_perceptual_loss_on_the_receivers_passes_equals_a_separate_pass(variant):
    torch.manual_seed(0)
    game = blob_game(variant)
    sender, receiver = tiny_agents(freeze_backbone=True)
    backbone = receiver.encoder.backbone
    weights = [1.0, 0.0, 0.5, 1.0, 2.0][: len(backbone.tap_names)]
    options = {"perceptual_weights": weights, "perceptual_coef": 0.5}
    plain_agents = copy.deepcopy((sender, receiver))
    separate_net = copy.deepcopy(backbone)  # the same network, not the same object: no fusion
    plain = GameLoss(*plain_agents, game, perceptual_net=separate_net, **options)
    fast = GameLoss(sender, receiver, game, perceptual_net=backbone, **options)
    assert plain.taps == () and fast.taps == tuple(
        n for n, w in zip(backbone.tap_names, weights, strict=True) if w
    )
    seen = images_seen(backbone)
    train_side_by_side(fast, plain, game)
    # Fused: the candidates and the sketches once per step; otherwise the perceptual
    # network's two passes come on top (and oo-different's senders see other images).
    passes = 2 if variant == "original" else 5
    assert len(seen) == 4 * passes


def test_no_fusion_for_a_trainable_backbone_or_another_network():
    game = blob_game()
    sender, receiver = tiny_agents()
    backbone = receiver.encoder.backbone
    options = {"perceptual_weights": default_tap_weights(backbone), "perceptual_coef": 1.0}
    assert GameLoss(sender, receiver, game, perceptual_net=backbone, **options).taps == ()
    frozen_sender, frozen_receiver = tiny_agents(freeze_backbone=True)
    other = frozen_backbone()
    assert (
        GameLoss(frozen_sender, frozen_receiver, game, perceptual_net=other, **options).taps == ()
    )
    assert GameLoss(frozen_sender, frozen_receiver, game).taps == ()  # no perceptual loss


# ----- the trainer: cache on by default for a frozen backbone, resume exact -------------


def test_a_run_with_the_cache_equals_one_without_and_resumes_exactly(folder, tmp_path, capsys):  # noqa: F811
    frozen = ("--freeze-backbone",)
    selfplay.main(tiny_args(folder, tmp_path / "cached", *frozen))
    assert "feature cache: 24 images' backbone features" in capsys.readouterr().out
    selfplay.main(tiny_args(folder, tmp_path / "plain", *frozen, "--feature-cache-mb", "0"))
    assert "feature cache" not in capsys.readouterr().out
    cached, plain = weights(tmp_path / "cached"), weights(tmp_path / "plain")
    for key in cached:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5, msg=key)

    selfplay.main(tiny_args(folder, tmp_path / "split", *frozen, "--max-steps", "4"))
    selfplay.main(["--resume", str(tmp_path / "split"), "--max-steps", "6"])
    resumed = weights(tmp_path / "split")  # its cache started empty: the same bits anyway
    assert all(torch.equal(cached[key], resumed[key]) for key in cached)
