"""agents/trainer.py: device choice, autocast, playing, the loss, one step and evaluation,
each against values worked out independently of the trainer."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from test_agents import Blobs, LineSender, PixelReceiver, tiny_agents, unique_params
from torch import nn

from agents import trainer
from agents.losses import game_loss, perceptual_loss
from agents.perceptual import default_tap_weights
from agents.trainer import (
    GameLoss,
    autocast,
    compute_loss,
    evaluate,
    play,
    render,
    select_device,
    senders_see_candidates,
    train_step,
    update,
)
from sketchenv.game import SketchGame

pytestmark = pytest.mark.usefixtures("one_thread")


def blob_game(variant: str = "original", **options) -> SketchGame:
    defaults = {"n_lines": 4} | ({"n_distractors": 4} if variant == "original" else {})
    return SketchGame(Blobs(12), variant, **(defaults | options))


def count_calls(module: nn.Module) -> list[int]:
    """A one-element list counting the module's forward calls."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ----- devices and autocast ------------------------------------------------------------


def test_select_device_auto_follows_cuda_availability(monkeypatch):
    assert select_device() == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda")
    assert select_device("cuda:1") == torch.device("cuda", 1)


def test_select_device_refusals_name_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as err:
        select_device("gpu")
    assert str(err.value) == "--device 'gpu' is not a device: use auto, cpu, cuda or cuda:N"
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(ValueError) as err:
        select_device("meta")
    assert str(err.value) == "--device 'meta': sketchenv runs on cpu or cuda (or auto)"
    with pytest.raises(ValueError) as err:
        select_device("cuda:0")
    assert str(err.value) == "--device cuda:0 asked for CUDA, but torch sees no CUDA device"


def test_autocast_is_float16_on_cuda_and_bfloat16_on_cpu_only_when_enabled():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": we only inspect it
        context = autocast(torch.device("cuda"), True)
    assert isinstance(context, torch.autocast)
    assert (context.device, context.fast_dtype) == ("cuda", torch.float16)
    context = autocast(torch.device("cpu"), True)
    assert (context.device, context.fast_dtype) == ("cpu", torch.bfloat16)
    for device, enabled in [("cuda", False), ("cpu", False), ("meta", True)]:
        assert isinstance(autocast(torch.device(device), enabled), contextlib.nullcontext)


def test_render_is_float32_under_autocast():
    game = blob_game()
    strokes = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    expected = game.render(strokes.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sketches = render(game, strokes)
    assert sketches.dtype == torch.float32
    torch.testing.assert_close(sketches, expected, rtol=0, atol=0)


# ----- playing -------------------------------------------------------------------------


def test_senders_see_candidates_only_when_game_j_draws_candidate_j():
    g = torch.Generator().manual_seed(0)
    assert senders_see_candidates(blob_game("original").sample(2, g))
    assert senders_see_candidates(blob_game("oo-same").sample(2, g))
    assert not senders_see_candidates(blob_game("oo-different").sample(2, g))
    batch = blob_game("original", n_distractors=2).sample(2, g)
    batch.sender_ids = batch.candidate_ids.flip(1)  # same shape, other images
    assert not senders_see_candidates(batch)


@pytest.mark.parametrize("variant", ["original", "oo-same", "oo-different"])
@pytest.mark.parametrize("separate", [False, True])
def test_fast_path_gives_the_plain_interfaces_outcome(variant, separate):
    torch.manual_seed(0)
    game = blob_game(variant)
    batch = game.sample(2, torch.Generator().manual_seed(1))
    sender, receiver = tiny_agents(separate_encoders=separate)
    fast = play(sender, receiver, game, batch)
    n_blocks, n_games = batch.targets.shape
    strokes = sender(batch.sender_images.flatten(0, 1)).view(n_blocks, n_games, 4, 4)
    sketches = game.render(strokes)
    torch.testing.assert_close(fast.strokes, strokes)
    torch.testing.assert_close(fast.sketches, sketches)
    torch.testing.assert_close(fast.scores, receiver(sketches, batch.candidates))


@pytest.mark.parametrize(("variant", "separate", "calls"), [
    ("original", False, 2),  # candidates (reused as the senders' input) and sketches
    ("oo-same", False, 2),
    ("oo-different", False, 3),  # the senders' images are not the candidates
    ("original", True, 3),  # the sender has its own encoder
])  # fmt: skip
def test_shared_encoder_encodes_each_image_once(variant, separate, calls):
    sender, receiver = tiny_agents(separate_encoders=separate)
    counts = {id(m): count_calls(m) for m in {sender.encoder, receiver.encoder}}
    game = blob_game(variant)
    play(sender, receiver, game, game.sample(2, torch.Generator().manual_seed(0)))
    assert sum(c[0] for c in counts.values()) == calls


def test_plug_in_agents_see_images_flat_and_give_games_shaped_outcomes():
    game = blob_game("original", n_distractors=3)
    batch = game.sample(2, torch.Generator().manual_seed(0))
    sender, receiver = LineSender(), PixelReceiver()
    outcome = play(sender, receiver, game, batch)
    strokes = sender(batch.sender_images.flatten(0, 1)).view(2, 4, 4, 4)
    assert outcome.strokes.shape == (2, 4, 4, 4)
    torch.testing.assert_close(outcome.strokes, strokes)
    torch.testing.assert_close(outcome.sketches, game.render(strokes))
    torch.testing.assert_close(outcome.scores, receiver(outcome.sketches, batch.candidates))
    assert outcome.taps is None  # so compute_loss runs the perceptual network itself


def test_a_built_in_agent_plays_beside_a_plug_in_one():
    game = blob_game("original", n_distractors=3)
    batch = game.sample(2, torch.Generator().manual_seed(0))
    built_in_sender, built_in_receiver = tiny_agents()
    for sender, receiver in [(built_in_sender, PixelReceiver()), (LineSender(), built_in_receiver)]:
        outcome = play(sender, receiver, game, batch)
        strokes = sender(batch.sender_images.flatten(0, 1)).view(2, 4, 4, 4)
        torch.testing.assert_close(outcome.strokes, strokes)
        torch.testing.assert_close(outcome.scores, receiver(outcome.sketches, batch.candidates))


def test_a_receiver_of_the_wrong_shape_is_refused():
    game = blob_game("original", n_distractors=3)
    batch = game.sample(2, torch.Generator().manual_seed(0))

    def transposed(sketches, candidates):
        return PixelReceiver()(sketches, candidates).transpose(1, 2)[:, :3]

    with pytest.raises(ValueError) as err:
        play(LineSender(), transposed, game, batch)
    assert str(err.value) == "receiver must return scores [B, G, C] = [2, 4, 4], got [2, 3, 4]"


# ----- the loss ------------------------------------------------------------------------


def test_compute_loss_adds_the_weighted_perceptual_loss():
    torch.manual_seed(0)
    game = blob_game("original", n_distractors=3)
    batch = game.sample(2, torch.Generator().manual_seed(0))
    sender, receiver = tiny_agents()
    outcome = play(sender, receiver, game, batch)
    net, weights = sender.encoder.backbone, [1.0, 0.5, 0.0, 0.0, 2.0]

    total, parts = compute_loss(outcome, batch)
    hinge = game_loss(outcome.scores, batch.targets, "hinge").item()
    assert parts == {"loss/game": pytest.approx(hinge), "loss/total": pytest.approx(hinge)}
    assert total.item() == pytest.approx(hinge)
    _, parts = compute_loss(outcome, batch, loss="ce", perceptual_net=net,
                            perceptual_weights=weights, perceptual_coef=0.0)  # fmt: skip
    ce = game_loss(outcome.scores, batch.targets, "ce").item()
    assert parts == {"loss/game": pytest.approx(ce), "loss/total": pytest.approx(ce)}

    total, parts = compute_loss(outcome, batch, perceptual_net=net, perceptual_weights=weights,
                                perceptual_coef=0.25)  # fmt: skip
    images, sketches = batch.sender_images.flatten(0, 1), outcome.sketches.flatten(0, 1)
    perceptual = perceptual_loss(net, images, sketches, weights).item()
    assert perceptual > 0
    assert parts == {
        "loss/game": pytest.approx(hinge),
        "loss/perceptual": pytest.approx(perceptual),
        "loss/total": pytest.approx(hinge + 0.25 * perceptual),
    }
    assert total.item() == pytest.approx(hinge + 0.25 * perceptual)


def test_compute_loss_with_a_perceptual_coef_needs_a_network():
    game = blob_game("original", n_distractors=3)
    batch = game.sample(1, torch.Generator().manual_seed(0))
    outcome = play(*tiny_agents(), game, batch)
    with pytest.raises(ValueError) as err:
        compute_loss(outcome, batch, perceptual_coef=1e-3)
    assert str(err.value) == "the perceptual loss needs a backbone (perceptual_net)"


# ----- one step ------------------------------------------------------------------------


def step_setup(seed: int = 0):
    torch.manual_seed(seed)
    game = blob_game("original", n_distractors=3)
    batch = game.sample(2, torch.Generator().manual_seed(seed))
    sender, receiver = LineSender(), PixelReceiver()
    return game, batch, sender, receiver, unique_params(sender, receiver)


def gradients(game, batch, sender, receiver, params) -> list[torch.Tensor]:
    """The game loss's gradients, computed without the trainer's step."""
    outcome = play(sender, receiver, game, batch)
    return torch.autograd.grad(game_loss(outcome.scores, batch.targets), params)


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_train_step_is_one_sgd_step_on_the_clipped_gradient(clip):
    game, batch, sender, receiver, params = step_setup()
    grads = gradients(game, batch, sender, receiver, params)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    assert norm > 1e-2  # so that the clip of 1e-3 bites
    before = [p.detach().clone() for p in params]
    for p in params:  # stale gradients, which the step must clear first
        p.grad = torch.ones_like(p)

    outcome, stats = train_step(sender, receiver, game, batch, torch.optim.SGD(params, lr=1.0),
                                params=params, grad_clip=clip)  # fmt: skip
    scale = 1.0 if clip is None else clip / (norm + 1e-6)  # clip_grad_norm_'s factor
    for p, b, g in zip(params, before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - scale * g, rtol=1e-4, atol=1e-7)
    assert stats["grad_norm"] == pytest.approx(norm, rel=1e-4)  # measured before clipping
    rates = game.score(outcome.scores.argmax(-1), batch)
    assert stats["comm_rate"] == rates["comm_rate"] and stats["class_rate"] == rates["class_rate"]
    assert set(stats) == {"loss/game", "loss/total", "grad_norm", "comm_rate", "class_rate"}
    assert stats["loss/game"] == pytest.approx(game_loss(outcome.scores, batch.targets).item())


def test_train_step_passes_the_loss_options_on():
    game, batch, sender, receiver, params = step_setup()
    scores = play(sender, receiver, game, batch).scores
    _, stats = train_step(sender, receiver, game, batch, torch.optim.SGD(params, lr=0.0),
                          params=params, loss="ce")  # fmt: skip
    expected = game_loss(scores, batch.targets, "ce").item()
    assert stats["loss/game"] == pytest.approx(expected)


def test_train_step_unscales_a_grad_scalers_gradients_and_updates_it():
    game, batch, sender, receiver, params = step_setup()
    _, _, *plain = step_setup()
    _, plain_stats = train_step(game=game, batch=batch, optimizer=torch.optim.SGD(plain[2], lr=1),
                                sender=plain[0], receiver=plain[1], params=plain[2])  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    _, stats = train_step(sender, receiver, game, batch, torch.optim.SGD(params, lr=1.0),
                          params=params, scaler=scaler)  # fmt: skip
    assert stats["grad_norm"] == pytest.approx(plain_stats["grad_norm"], rel=1e-5)
    for p, q in zip(params, plain[2], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert scaler.get_scale() == 2048.0  # one finite step grows the scale (growth_interval 1)


def test_train_step_runs_the_models_under_the_autocast_it_is_asked_for(monkeypatch):
    seen = []

    def recording_autocast(device, enabled):
        seen.append((device, enabled))
        return contextlib.nullcontext()

    monkeypatch.setattr(trainer, "autocast", recording_autocast)
    game, batch, sender, receiver, params = step_setup()
    optimizer = torch.optim.SGD(params, lr=0.1)
    train_step(sender, receiver, game, batch, optimizer, params=params, amp=True)
    train_step(sender, receiver, game, batch, optimizer, params=params)
    evaluate(sender, receiver, game, [batch], torch.device("cpu"), amp=True)
    cpu = torch.device("cpu")
    assert seen == [(cpu, True), (cpu, False), (cpu, True)]


class Wrapped(nn.Module):
    """What DistributedDataParallel looks like to ``update``: the model under ``.module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


@pytest.mark.parametrize("wrap", [False, True])
def test_update_steps_on_the_weighted_loss_of_a_game_loss_or_its_wrapper(wrap):
    game, batch, sender, receiver, params = step_setup()
    grads = gradients(game, batch, sender, receiver, params)
    model = GameLoss(sender, receiver, game)
    loss, _, stats = model(batch)
    assert loss.item() == pytest.approx(stats["loss/game"])  # the default weight is 1
    half, _, half_stats = model(batch, 0.5)
    assert half.item() == pytest.approx(0.5 * loss.item())
    assert half_stats == stats  # the scalars are the unweighted loss's
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    outcome, stats = update(Wrapped(model) if wrap else model, batch, optimizer, params=params,
                            weight=0.5)  # fmt: skip
    for p, b, g in zip(params, before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.5 * g, rtol=1e-4, atol=1e-7)
    assert stats["comm_rate"] == game.score(outcome.scores.argmax(-1), batch)["comm_rate"]


def test_update_leaves_a_parameter_the_loss_does_not_reach_without_a_gradient():
    """Gradients are cleared to None, so an optimiser skips what a step does not reach
    (Adam would otherwise move it on its momentum)."""
    game, batch, sender, receiver, params = step_setup()
    unused = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([*params, unused], lr=0.1)
    unused.grad = torch.ones(3)
    optimizer.step()  # gives it momentum
    moved = unused.detach().clone()
    update(GameLoss(sender, receiver, game), batch, optimizer, params=[*params, unused])
    assert unused.grad is None
    assert torch.equal(unused.detach(), moved)


def test_game_loss_fuses_only_with_a_perceptual_loss_and_checks_its_weights():
    game = blob_game()
    sender, receiver = tiny_agents(freeze_backbone=True)
    backbone = receiver.encoder.backbone
    weights = default_tap_weights(backbone)
    fused = GameLoss(sender, receiver, game, perceptual_net=backbone,
                     perceptual_weights=weights, perceptual_coef=1.0)  # fmt: skip
    assert fused.taps == tuple(n for n, w in zip(backbone.tap_names, weights, strict=True) if w)
    unused = GameLoss(sender, receiver, game, perceptual_net=backbone,
                      perceptual_weights=weights, perceptual_coef=0.0)  # fmt: skip
    assert unused.taps == ()
    with pytest.raises(ValueError) as err:
        GameLoss(sender, receiver, game, perceptual_net=backbone, perceptual_weights=[1.0],
                 perceptual_coef=1.0)  # fmt: skip
    assert str(err.value).startswith(
        f"--perceptual-weights needs {len(backbone.tap_names)} values for backbone"
    )
    assert str(err.value).endswith("got 1")


# ----- evaluation ----------------------------------------------------------------------


def test_evaluate_weights_each_batch_by_its_games_and_restores_modes():
    torch.manual_seed(0)
    game = blob_game("original", n_distractors=3)
    g = torch.Generator().manual_seed(0)
    batches = [game.sample(1, g), game.sample(3, g)]  # 4 and 12 games
    sender, receiver = tiny_agents()
    sender.train()
    receiver.eval()
    with torch.no_grad():
        sender.eval()  # the outcomes evaluate should see: batch norm in eval mode
        outcomes = [play(sender, receiver, game, b) for b in batches]
        sender.train()
    rates, first = evaluate(sender, receiver, game, batches, torch.device("cpu"),
                            loss="ce")  # fmt: skip

    def mean(values):
        return (values[0] * 4 + values[1] * 12) / 16

    choices = [game.score(o.scores.argmax(-1), b) for o, b in zip(outcomes, batches, strict=True)]
    losses = [game_loss(o.scores, b.targets, "ce").item()
              for o, b in zip(outcomes, batches, strict=True)]  # fmt: skip
    assert rates == {
        "loss": pytest.approx(mean(losses)),
        "comm_rate": pytest.approx(mean([c["comm_rate"] for c in choices])),
        "class_rate": pytest.approx(mean([c["class_rate"] for c in choices])),
        "strokes_used": 4.0,  # every stroke, in a format without opacity
        "games": 16,
    }
    assert first[0] is not None and torch.equal(first[0].targets, batches[0].targets)
    torch.testing.assert_close(first[1].scores, outcomes[0].scores)
    assert not first[1].scores.requires_grad
    assert sender.training and not receiver.training


def test_evaluate_restores_modes_after_an_error_and_refuses_no_batches():
    sender, receiver = tiny_agents()
    game = blob_game("original", n_distractors=3)

    def broken():
        yield game.sample(1)
        raise RuntimeError("the data loader broke")

    with pytest.raises(RuntimeError, match="the data loader broke"):
        evaluate(sender, receiver, game, broken(), torch.device("cpu"))
    assert sender.training and receiver.training
    with pytest.raises(ValueError) as err:
        evaluate(sender, receiver, game, [], torch.device("cpu"))
    assert str(err.value) == "evaluate got no batches"
    assert sender.training and receiver.training
