"""python -m train.selfplay: outputs, configuration precedence, interruption and exact resume."""

from __future__ import annotations

import csv
import json
import shutil
import signal

import numpy as np
import pytest
import torch
from fakedata import write_photo_folder

import agents.selfplay as trainer
import sketchenv
import train.selfplay as selfplay
from agents.backbones import make_backbone, save_weights
from agents.checkpoint import load_run, read_checkpoint
from agents.policies import AgentPolicy
from agents.runs import stop_on_signal


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """imagefolder data: 3 classes, 8 train and 4 val images each, 16 px."""
    return write_photo_folder(tmp_path_factory.mktemp("photos"), {"train": 8, "val": 4}, seed=0)


def tiny_args(folder, out, *extra: str) -> list[str]:
    """24 train images in blocks of 4, 2 blocks per step: 3 steps per epoch."""
    return [
        "--dataset", f"imagefolder:{folder}", "--image-size", "16", "--n-distractors", "3",
        "--batch-size", "8", "--backbone-width", "4", "--lines", "4", "--epochs", "2",
        "--val-games", "8", "--log-every", "1", "--warmup-steps", "2", "--sigma2", "5e-3",
        "--output", str(out), *extra,
    ]  # fmt: skip


def weights(path) -> dict[str, torch.Tensor]:
    payload = read_checkpoint(path, which="last")
    return {
        **{f"sender.{k}": v for k, v in payload["sender"].items()},
        **{f"receiver.{k}": v for k, v in payload["receiver"].items()},
    }


def test_run_directory_holds_config_logs_grids_and_checkpoints(folder, tmp_path):
    metrics = selfplay.main(tiny_args(folder, tmp_path / "run"))
    run_dir = tmp_path / "run"
    assert 0 <= metrics["comm_rate"] <= 1 and metrics["games"] == 8
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["lines"] == 4 and saved["config"]["perceptual_weights"] is None
    assert saved["game"]["n_candidates"] == 4 and saved["derived"]["steps_per_epoch"] == 3
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert len(list((run_dir / "grids").glob("step*.png"))) == 2
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()
    best = read_checkpoint(run_dir)["best"]
    assert load_run(run_dir).progress["step"] == best["step"]  # best.pt is the default
    run = load_run(run_dir, which="last")
    assert run.game["n_candidates"] == 4 and run.progress["step"] == 6
    assert run.sender(torch.rand(2, 3, 16, 16)).shape == (2, 4, 4)
    with pytest.raises(FileExistsError, match="--resume"):
        selfplay.main(tiny_args(folder, run_dir))


def run_with_sigterm_in_step(n: int, args: list[str]) -> int:
    """``selfplay.main(args)`` with SIGTERM arriving during training step ``n``; returns how
    many steps ran."""
    real_step, calls = trainer.update, []

    def step_then_sigterm(*step_args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGTERM)
        return real_step(*step_args, **kwargs)

    trainer.update = step_then_sigterm
    try:
        selfplay.main(args)
    finally:
        trainer.update = real_step
    return len(calls)


def test_interrupt_then_resume_equals_a_straight_run(folder, tmp_path):
    selfplay.main(tiny_args(folder, tmp_path / "straight"))

    assert run_with_sigterm_in_step(2, tiny_args(folder, tmp_path / "split")) == 2  # mid-epoch 1
    progress = read_checkpoint(tmp_path / "split", which="last")["progress"]
    assert (progress["epoch"], progress["batch"], progress["step"], progress["n_steps"]) == (
        0, 2, 2, 2
    )  # fmt: skip
    assert not (tmp_path / "split" / "best.pt").exists()  # no validation when interrupted mid-epoch
    (tmp_path / "split" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a kill -9

    shutil.move(tmp_path / "split", tmp_path / "moved")  # a run folder continues where it is
    selfplay.main(["--resume", str(tmp_path / "moved")])
    assert not (tmp_path / "split").exists()
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["config"]["output"] == str(
        tmp_path / "moved"
    )
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "moved")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    a = read_checkpoint(tmp_path / "straight", which="last")["optimizer"]["state"]
    b = read_checkpoint(tmp_path / "moved", which="last")["optimizer"]["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    # The interrupted epoch's training averages count its steps before the stop too.
    rows = [read_rows(tmp_path / name) for name in ("straight", "moved")]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]
    assert not list((tmp_path / "moved").glob(".*.tmp"))  # the killed write's leftover is gone


def read_rows(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_sigterm_in_an_epochs_last_step_validates_that_epoch(folder, tmp_path):
    assert run_with_sigterm_in_step(3, tiny_args(folder, tmp_path / "run")) == 3  # epoch 1's last
    progress = read_checkpoint(tmp_path / "run", which="last")["progress"]
    assert (progress["epoch"], progress["batch"], progress["step"]) == (1, 0, 3)
    assert [row["epoch"] for row in read_rows(tmp_path / "run")] == ["1"]  # its row...
    assert (tmp_path / "run" / "best.pt").exists()  # ...and its chance at best.pt


def test_resume_cannot_stretch_the_cosine_schedule(folder, tmp_path):
    selfplay.main(tiny_args(folder, tmp_path / "run", "--max-steps", "2"))
    with pytest.raises(ValueError, match="goes past the cosine schedule"):
        selfplay.main(["--resume", str(tmp_path / "run"), "--epochs", "3"])
    selfplay.main(["--resume", str(tmp_path / "run"), "--max-steps", "3"])  # same epochs: fine
    assert read_checkpoint(tmp_path / "run", which="last")["progress"]["schedule_steps"] == 6


def test_resume_refuses_to_change_what_was_trained(folder, tmp_path):
    selfplay.main(tiny_args(folder, tmp_path / "run", "--max-steps", "1"))
    with pytest.raises(ValueError, match=r"\['lr'\] cannot change"):
        selfplay.main(["--resume", str(tmp_path / "run"), "--lr", "0.5"])


def test_threads_are_set_for_the_run_and_may_change_on_resume(folder, tmp_path):
    before = torch.get_num_threads()
    try:
        selfplay.main(tiny_args(folder, tmp_path / "run", "--max-steps", "1", "--threads", "2"))
        assert torch.get_num_threads() == 2
        assert read_checkpoint(tmp_path / "run", which="last")["config"]["threads"] == 2
        selfplay.main(["--resume", str(tmp_path / "run"), "--max-steps", "2"])  # its own count
        assert torch.get_num_threads() == 2
        selfplay.main(["--resume", str(tmp_path / "run"), "--max-steps", "3", "--threads", "1"])
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        selfplay.main(tiny_args(folder, tmp_path / "default", "--max-steps", "1"))
        assert torch.get_num_threads() == 1  # the default: one thread (agents.runs.THREADS)
        with pytest.raises(ValueError, match="threads must be >= 0"):
            selfplay.main(tiny_args(folder, tmp_path / "bad", "--threads", "-1"))
    finally:
        torch.set_num_threads(before)


def test_config_file_then_flags(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text('game = "oo-same"\nlines = 3\nlr = 0.1\nsender-hidden = [8, 8]\n')
    config, resumed = selfplay.resolve_config(["--config", str(toml), "--lr", "0.2"])
    assert resumed is None
    assert (config.game, config.lines, config.lr, config.sender_hidden) == (
        "oo-same",
        3,
        0.2,
        [8, 8],
    )
    assert config.output.startswith("runs/selfplay-oo-same-")
    js = tmp_path / "exp.json"
    js.write_text(json.dumps({"loss": "ce", "epochs": 3}))
    config, _ = selfplay.resolve_config(["--config", str(js), "--epochs", "5"])
    assert (config.loss, config.epochs) == ("ce", 5)
    js.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rate'\]"):
        selfplay.resolve_config(["--config", str(js)])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        selfplay.resolve_config(["--epochs", "0"])


def test_signal_handler_sets_a_flag_then_aborts():
    with stop_on_signal() as flag:
        signal.raise_signal(signal.SIGTERM)
        assert flag["signal"] == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_every_agent_and_loss_option_runs(folder, tmp_path):
    args = tiny_args(folder, tmp_path / "run", "--game", "oo-different", "--n-distractors", "2")
    args += [
        "--separate-encoders", "--freeze-backbone", "--loss", "ce", "--score", "dot",
        "--perceptual-coef", "0.5", "--perceptual-net", "agents",
        "--perceptual-weights", "0", "0", "1", "0", "1",
        "--lr-schedule", "constant", "--weight-decay", "0.01", "--latent-size", "16",
        "--sender-hidden", "8", "--receiver-hidden", "8", "8", "--receiver-out", "4",
        "--no-invert", "--time-budget", "0.001",
    ]  # fmt: skip
    metrics = selfplay.main(args)
    assert 0 <= metrics["comm_rate"] <= 1
    run = load_run(tmp_path / "run")
    assert run.config.separate_encoders and run.sender.encoder is not run.receiver.encoder
    assert run.game["game"] == "oo-different" and run.game["invert"] is False
    assert run.progress["step"] == 1  # the time budget stopped it after one step
    with pytest.raises(ValueError, match="needs 4 values"):  # the drawing network's levels
        args = tiny_args(folder, tmp_path / "bad", "--perceptual-weights", "1", "1")
        selfplay.main([*args, "--perceptual-coef", "1"])


def test_a_curve_run_trains_reloads_evaluates_and_plays_the_env(folder, tmp_path):
    """--curve-segments 2 with --lines 4: two curves of two chained lines, everywhere a
    run's sender goes (checkpoint, train.evaluate, the env through AgentPolicy)."""
    from train import evaluate

    selfplay.main(tiny_args(folder, tmp_path / "run", "--curve-segments", "2", "--max-steps", "2"))
    run = load_run(tmp_path / "run")
    assert run.config.curve_segments == 2 and run.sender.decoder[-1].out_features == 2 * 6
    with torch.no_grad():
        strokes = run.sender(torch.rand(3, 3, 16, 16)).view(3, 2, 2, 4)
    torch.testing.assert_close(strokes[:, :, 1, :2], strokes[:, :, 0, 2:])  # chained
    eval_args = [str(tmp_path / "run"), "--split", "val", "--output", str(tmp_path / "eval")]
    results = evaluate.main(eval_args)
    assert results["games"] > 0 and 0 <= results["comm_rate"] <= 1
    policy = AgentPolicy.from_checkpoint(tmp_path / "run")
    env = sketchenv.parallel_env(**policy.env_options(split="val"))
    policy.check_env(env)
    observations, _ = env.reset(seed=0)
    action = policy(observations["sender_0"], "sender_0")
    assert action.shape == (4, 4)
    assert np.allclose(action[1, :2], action[0, 2:]) and np.allclose(action[3, :2], action[2, 2:])
    with pytest.raises(ValueError, match=r"lines \(4\) must be a multiple of curve_segments \(3\)"):
        selfplay.main(tiny_args(folder, tmp_path / "bad", "--curve-segments", "3"))


def test_a_stroke_format_run_trains_reloads_evaluates_and_plays_the_env(folder, tmp_path):
    """Cubic curves with width, opacity and colour and the strokes drawing cost: the
    format reaches the sender, the checkpoint, train.evaluate (strokes used, SVG) and the
    env through AgentPolicy, which refuses an env of another format."""
    from train import evaluate

    options = ["--primitive", "cubic", "--stroke-width", "--stroke-opacity", "--stroke-colour"]
    args = tiny_args(folder, tmp_path / "run", *options, "--drawing-cost", "0.5")
    selfplay.main([*args, "--max-steps", "2"])
    run = load_run(tmp_path / "run")
    assert str(run.sender.stroke_format) == "cubic+width+opacity+colour"
    assert run.sender.decoder[-1].out_features == 4 * 13
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert rows  # the drawing cost trained without error; its value is logged by the step
    eval_args = [str(tmp_path / "run"), "--split", "val", "--output", str(tmp_path / "eval")]
    results = evaluate.main([*eval_args, "--grid", "3"])
    used = results["strokes_used"]
    assert 0 <= used["mean"] <= 4 and sum(used["histogram"].values()) == results["games"]
    svgs = sorted((tmp_path / "eval" / "sketches-svg").glob("*.svg"))
    assert [p.name for p in svgs] == ["000.svg", "001.svg", "002.svg"]
    assert svgs[0].read_text().count("<path") == 4 and " C " in svgs[0].read_text()
    games = [json.loads(line) for line in (tmp_path / "eval" / "games.jsonl").open()]
    assert sum(g["strokes_used"] for g in games) == pytest.approx(used["mean"] * len(games))
    policy = AgentPolicy.from_checkpoint(tmp_path / "run")
    env = sketchenv.parallel_env(**policy.env_options(split="val"))
    policy.check_env(env)
    observations, _ = env.reset(seed=0)
    action = policy(observations["sender_0"], "sender_0")
    assert env.action_space("sender_0").contains(action) and action.shape == (4, 13)
    lines = sketchenv.parallel_env(**policy.env_options(split="val", stroke_format="line"))
    with pytest.raises(ValueError) as err:
        policy.check_env(lines)
    assert "the env's strokes are line, these agents draw and read cubic+width" in str(err.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--drawing-cost", "1"], "the 'strokes' drawing cost counts strokes by their opacity"),
        (["--primitive", "cubic", "--curve-segments", "2"], "curve_segments bends plain lines"),
        (["--primitive", "spline"], "invalid choice: 'spline'"),
    ],
)
def test_stroke_options_that_cannot_work_are_refused(folder, tmp_path, flags, message, capsys):
    with pytest.raises((ValueError, SystemExit)) as err:
        selfplay.main(tiny_args(folder, tmp_path / "bad", *flags))
    assert message in str(err.value) + capsys.readouterr().err


def test_pretrained_weights_and_perceptual_network_options(folder, tmp_path):
    torch.manual_seed(5)
    pretrained = make_backbone("small", "none", width=4)
    info = {"method": "simclr", "dataset": "x", "image_size": [16, 16], "width": 4}
    save_weights(tmp_path / "w.pt", pretrained, info)
    args = tiny_args(folder, tmp_path / "run", "--weights", str(tmp_path / "w.pt"))
    args += ["--perceptual-coef", "1", "--perceptual-net", "drawing", "--max-steps", "2"]
    selfplay.main(args)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["perceptual_net"] == "drawing" and saved["perceptual_weights"] == [
        4.0,
        2.0,
        1.0,
        1.0,
    ]
    assert saved["freeze_backbone"] is True  # pretrained weights are frozen by default
    run = load_run(tmp_path / "run", which="last")
    for key, value in pretrained.features.state_dict().items():  # frozen: unchanged
        assert torch.equal(run.sender.encoder.backbone.features.state_dict()[key], value)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert float(rows[-1]["train_loss"]) > 0
    with pytest.raises(ValueError, match=r"width 4 \(here 8\)"):
        selfplay.main(
            tiny_args(
                folder, tmp_path / "b", "--weights", str(tmp_path / "w.pt"), "--backbone-width", "8"
            )
        )
    with pytest.raises(ValueError, match="unknown perceptual_net"):
        selfplay.main(
            tiny_args(folder, tmp_path / "c", "--perceptual-coef", "1", "--perceptual-net", "lpips")
        )


@pytest.mark.slow
def test_default_run_communicates(tmp_path):
    """The no-argument run (shapes, original game, 99 distractors) passes 80 % validation
    communication (chance: 1 %); a few minutes on a 2-core CPU."""
    metrics = selfplay.main(["--output", str(tmp_path / "run")])
    assert metrics["comm_rate"] >= 0.8


@pytest.mark.slow
def test_default_oo_different_run_communicates_by_class(tmp_path):
    """The semantic game with no other argument: the shipped visual system lets it pass
    80 % on the test split (chance 1/12) in a few minutes, and every class well above
    chance; from scratch it stays at chance (README, Known limitations). Without a
    perceptual loss its sketches are blobs whose recognisability is chance give or take
    rounding (6-9 %), so that is reported but not asserted."""
    from train import evaluate

    selfplay.main(["--game", "oo-different", "--output", str(tmp_path / "run")])
    results = evaluate.main([str(tmp_path / "run"), "--output", str(tmp_path / "eval")])
    assert results["comm_rate"] >= 0.8
    assert min(row["comm_rate"] for row in results["per_class"].values()) >= 0.5
    assert 0 <= results["recognisability"] <= 1


def trainer_view(folder, out, monkeypatch, *flags: str) -> dict:
    """What the trainer was handed in a 2-step run with ``flags``: the game's settings,
    the loss options, the optimiser's learning rate at each step and its decay, the
    agents' structure and the first batch's games."""
    seen: dict = {"lr": []}
    real = trainer.update

    def recording(model, batch, optimizer, **kwargs):
        seen["lr"].append(round(optimizer.param_groups[0]["lr"], 12))
        sender, receiver, game, options = (
            model.sender,
            model.receiver,
            model.game,
            model.loss_options,
        )
        if "game" not in seen:
            net = options["perceptual_net"]
            params = [p for m in (sender, receiver) for p in m.parameters()]
            seen.update(
                game=(game.game, game.n_candidates, game.n_lines, game.sigma2, game.invert,
                      game.image_size),
                loss=(options["loss"], options["perceptual_coef"],
                      tuple(options["perceptual_weights"] or ()),
                      type(net).__name__ if net is not None else None),
                grad_clip=kwargs["grad_clip"],
                decay=optimizer.param_groups[0]["weight_decay"],
                trainable=sum(p.numel() for p in kwargs["params"]),
                shared=sender.encoder is receiver.encoder,
                parameters=sum(p.numel() for p in {id(p): p for p in params}.values()),
                score=(receiver.score_kind, None if receiver.log_scale is None
                       else round(receiver.log_scale.exp().item(), 6)),
                blocks=batch.candidate_ids.shape[0],
                first_games=batch.candidate_ids.tolist(),
            )  # fmt: skip
        return real(model, batch, optimizer, **kwargs)

    monkeypatch.setattr(trainer, "update", recording)
    selfplay.main(tiny_args(folder, out, "--max-steps", "2", *flags))
    monkeypatch.setattr(trainer, "update", real)
    return seen


# Each training flag of train.selfplay, and what it must change in the trainer's hands.
FLAG_EFFECTS = [
    # (games of another layout also change the first batch and, through the number of
    # steps per epoch, the cosine schedule's learning rate at step 2)
    (["--game", "oo-same", "--n-distractors", "2"], ["game", "first_games", "lr"]),
    (["--n-distractors", "2"], ["game", "first_games", "lr"]),
    (["--lines", "6"], ["game", "parameters", "trainable"]),
    (["--sigma2", "1e-3"], ["game"]),
    (["--no-invert"], ["game"]),
    (["--image-size", "12"], ["game"]),  # 16 and 12 px both end in a 1 x 1 map
    (["--backbone-width", "8"], ["parameters", "trainable"]),
    (["--freeze-backbone"], ["trainable"]),
    (["--separate-encoders"], ["shared", "parameters", "trainable"]),
    (["--latent-size", "16"], ["parameters", "trainable"]),
    (["--sender-hidden", "8"], ["parameters", "trainable"]),
    (["--receiver-hidden", "8"], ["parameters", "trainable"]),
    (["--receiver-out", "8"], ["parameters", "trainable"]),
    (["--score", "dot"], ["score", "parameters", "trainable"]),  # no learnable scale
    (["--score-scale", "5"], ["score"]),
    (["--loss", "ce"], ["loss"]),
    (["--perceptual-coef", "1"], ["loss"]),
    (["--perceptual-coef", "1", "--perceptual-net", "edges"], ["loss"]),
    (["--perceptual-coef", "1", "--perceptual-weights", "1", "1", "1", "1"], ["loss"]),
    (["--batch-size", "4"], ["blocks", "first_games", "lr"]),
    (["--lr", "3e-3"], ["lr"]),
    (["--warmup-steps", "1"], ["lr"]),
    (["--lr-schedule", "constant", "--warmup-steps", "0"], ["lr"]),
    (["--epochs", "5", "--warmup-steps", "0"], ["lr"]),
    (["--weight-decay", "0.1"], ["decay"]),
    (["--grad-clip", "0.5"], ["grad_clip"]),
    (["--seed", "3"], ["first_games"]),
]


@pytest.mark.parametrize(("flags", "changed"), FLAG_EFFECTS, ids=lambda v: " ".join(v))
def test_each_training_flag_changes_what_the_trainer_does(
    folder, tmp_path, monkeypatch, flags, changed
):
    base = trainer_view(folder, tmp_path / "base", monkeypatch)
    if "--lr-schedule" in flags or "--epochs" in flags:  # compare with no warm-up either
        base = trainer_view(folder, tmp_path / "base0", monkeypatch, "--warmup-steps", "0")
    view = trainer_view(folder, tmp_path / "run", monkeypatch, *flags)
    differs = sorted(k for k in base if base[k] != view[k])
    assert differs == sorted(changed), differs


def test_learning_rate_schedule_and_default_stroke_width_by_hand():
    from agents.config import default_sigma2
    from agents.runs import lr_factor

    # warm-up of 4 steps: (step + 1) / 4, then cosine over 10 steps: (1 + cos(pi s / 10)) / 2
    assert [lr_factor(s, 4, 10, "constant") for s in (0, 1, 3, 9)] == [0.25, 0.5, 1.0, 1.0]
    cosine = [lr_factor(s, 4, 10, "cosine") for s in (0, 3, 5, 10, 12)]
    assert cosine == pytest.approx([0.25, 0.7938926, 0.5, 0.0, 0.0], abs=1e-6)
    assert lr_factor(0, 0, 10, "constant") == 1.0 and lr_factor(5, 0, 0, "cosine") == 1.0
    # the paper's 5e-4 at 96 px, kept in pixels: x (96 / size)^2
    widths = [default_sigma2(s) for s in (96, 32, 64, 192)]
    assert widths == pytest.approx([5e-4, 4.5e-3, 1.125e-3, 1.25e-4], rel=1e-12)
