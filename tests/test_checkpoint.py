"""agents.checkpoint on checkpoints written by hand (no training): what is saved about the
game, which file a run directory gives, every refusal's exact message, and load_run."""

from __future__ import annotations

import pytest
import torch

from agents.backbones import make_backbone, save_weights
from agents.checkpoint import (
    CheckpointError,
    find_checkpoint,
    game_settings,
    load_agent_weights,
    load_run,
    read_checkpoint,
    save_checkpoint,
)
from agents.config import config_from_dict
from agents.experiment import fill_defaults, make_agents, make_game
from agents.files import load_torch


def small_config(tmp_path):
    """A 16 px shapes run whose backbone weights file is deleted once the agents exist:
    loading a checkpoint must not read it (the checkpoint holds every weight)."""
    weights = tmp_path / "backbone.pt"
    info = {"method": "supervised", "dataset": "shapes", "image_size": [16, 16], "width": 4}
    save_weights(weights, make_backbone("small", width=4, image_size=16), info)
    values = {"image_size": 16, "lines": 3, "n_distractors": 3, "backbone_width": 4,
              "latent_size": 8, "sender_hidden": [8], "receiver_out": 8, "weights": str(weights)}  # fmt: skip
    return config_from_dict(values), weights


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with last.pt and best.pt of different agents (best: seed 1)."""
    config, weights = small_config(tmp_path)
    game = make_game(config, "train")
    config = fill_defaults(config, game)
    folder = tmp_path / "run"
    folder.mkdir()
    for name, seed in (("last.pt", 0), ("best.pt", 1)):
        torch.manual_seed(seed)
        sender, receiver = make_agents(config, game.image_size)
        payload = {"config": config.to_dict(), "game": game_settings(game),
                   "sender": sender.state_dict(), "receiver": receiver.state_dict(),
                   "progress": {"step": seed}, "metrics": {"comm_rate": 0.5 + seed}}  # fmt: skip
        save_checkpoint(folder / name, payload)
    weights.unlink()
    return folder


def test_game_settings_record_what_rebuilds_the_game():
    game = make_game(config_from_dict({"n_distractors": 4, "lines": 7, "sigma2": 1e-3}), "val")
    settings = game_settings(game)
    assert settings == {
        "game": "original", "image_size": [32, 32], "n_distractors": 4, "n_candidates": 5,
        "n_lines": 7, "sigma2": 1e-3, "kernel": game.kernel, "composite": game.composite,
        "invert": True, "stroke_format": "line", "n_classes": 12,
        "classes": list(game.dataset.classes),
    }  # fmt: skip
    assert all(isinstance(c, str) for c in settings["classes"]) and len(settings["classes"]) == 12


def test_game_settings_number_the_classes_of_a_dataset_that_names_none():
    game = make_game(config_from_dict({}), "val")
    del game.dataset.classes  # a dataset without a class list
    assert game_settings(game)["classes"] == [str(c) for c in range(12)]


def test_a_checkpoint_holds_its_format_version_and_payload(run_dir):
    raw = load_torch(run_dir / "last.pt")
    assert (raw["format"], raw["version"]) == ("sketchenv-selfplay", 1)
    assert raw["progress"] == {"step": 0}


def test_a_run_directory_gives_best_then_last_and_resume_takes_last(run_dir, tmp_path):
    assert find_checkpoint(run_dir) == run_dir / "best.pt"
    assert find_checkpoint(run_dir, "best") == run_dir / "best.pt"
    assert find_checkpoint(run_dir, which="last") == run_dir / "last.pt"
    assert find_checkpoint(run_dir / "last.pt") == run_dir / "last.pt"  # a file is itself
    assert find_checkpoint(str(run_dir / "last.pt"), "best") == run_dir / "last.pt"
    assert read_checkpoint(run_dir)["progress"] == {"step": 1}
    assert read_checkpoint(run_dir, "last")["progress"] == {"step": 0}
    assert read_checkpoint(run_dir)["path"] == str(run_dir / "best.pt")
    (run_dir / "best.pt").unlink()
    assert find_checkpoint(run_dir) == run_dir / "last.pt"


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as refused:
        call(*args, **kwargs)
    return str(refused.value)


def test_missing_checkpoints_are_named_with_what_was_expected(tmp_path):
    assert refusal(find_checkpoint, tmp_path) == (
        f"no checkpoint in {tmp_path}: expected best.pt or last.pt"
    )
    (tmp_path / "best.pt").write_bytes(b"")
    assert refusal(find_checkpoint, tmp_path, "last") == (
        f"no checkpoint in {tmp_path}: expected last.pt"
    )
    assert refusal(find_checkpoint, tmp_path / "gone.pt") == (
        f"checkpoint {str(tmp_path / 'gone.pt')!r} does not exist (give a run dir or a .pt file)"
    )


def test_files_that_are_not_checkpoints_are_refused_by_name(tmp_path, run_dir):
    file = tmp_path / "x.pt"
    file.write_bytes(b"not a torch file")
    assert refusal(read_checkpoint, file).startswith(f"checkpoint {file} cannot be loaded safely")
    torch.save({"weight": torch.zeros(1)}, file)
    assert refusal(read_checkpoint, file) == (
        f"{file} is not a sketchenv self-play checkpoint (no format='sketchenv-selfplay' "
        "entry); plain weight files go to --weights, not --resume"
    )
    torch.save([1, 2], file)
    assert "is not a sketchenv self-play checkpoint" in refusal(read_checkpoint, file)
    payload = load_torch(run_dir / "last.pt")
    torch.save({**payload, "version": 7}, file)
    assert refusal(read_checkpoint, file) == (
        f"{file} has checkpoint version 7; this sketchenv reads version 1"
    )
    del payload["version"]
    torch.save(payload, file)
    assert refusal(read_checkpoint, file) == (
        f"{file} has checkpoint version None; this sketchenv reads version 1"
    )
    payload = load_torch(run_dir / "last.pt")
    del payload["game"], payload["receiver"]
    torch.save(payload, file)
    assert refusal(read_checkpoint, file) == f"{file} lacks ['game', 'receiver']: it is incomplete"


def test_weights_that_do_not_fit_are_refused_naming_the_file_and_the_agent(run_dir):
    payload = read_checkpoint(run_dir, "last")
    config = config_from_dict({**payload["config"], "lines": 4})
    sender, receiver = make_agents(config, (16, 16), load_weights=False)
    message = refusal(load_agent_weights, sender, receiver, payload)
    assert message.startswith(
        f"{run_dir / 'last.pt'}: the sender weights do not fit the model its config describes "
        "(was it written by another version or edited?): Error(s) in loading"
    )
    del payload["path"]
    sender, receiver = make_agents(
        config_from_dict(payload["config"]), (16, 16), load_weights=False
    )
    payload["receiver"] = {}
    assert refusal(load_agent_weights, sender, receiver, payload).startswith(
        "checkpoint: the receiver weights do not fit"
    )


def test_load_run_rebuilds_the_agents_without_reading_their_pretrained_weights(run_dir):
    run = load_run(run_dir)
    assert run.path == str(run_dir / "best.pt")
    assert (run.progress, run.metrics) == ({"step": 1}, {"comm_rate": 1.5})
    saved = read_checkpoint(run_dir)
    for name, module in (("sender", run.sender), ("receiver", run.receiver)):
        assert not module.training
        state = module.state_dict()
        assert all(state[k].equal(v) for k, v in saved[name].items())
    last = load_run(run_dir, which="last")
    assert last.path == str(run_dir / "last.pt") and last.progress == {"step": 0}
    assert not last.sender.decoder[0].weight.equal(run.sender.decoder[0].weight)
    assert run.game == saved["game"] and run.config == config_from_dict(saved["config"])
    strokes = run.sender(torch.zeros(2, 3, 16, 16))
    assert strokes.shape == (2, 3, 4)


def test_load_run_puts_the_agents_on_the_device_asked_for(run_dir):
    run = load_run(run_dir, device="meta")  # a device other than the CPU, on any machine
    assert {p.device.type for p in [*run.sender.parameters(), *run.receiver.parameters()]} == {
        "meta"
    }
    default = load_run(run_dir)
    assert {p.device.type for p in default.sender.parameters()} == {"cpu"}


def test_load_run_says_when_the_saved_config_is_not_valid(run_dir, tmp_path):
    payload = load_torch(run_dir / "last.pt")
    file = tmp_path / "edited.pt"
    save_checkpoint(file, {**payload, "config": {**payload["config"], "lines": 0}})
    assert refusal(load_run, file) == f"{file}: its config is not valid here: lines must be >= 1"
    save_checkpoint(file, {**payload, "config": {**payload["config"], "colour": 1}})
    assert refusal(load_run, file).startswith(
        f"{file}: its config is not valid here: unknown config key(s) ['colour']"
    )


def test_a_runs_games_use_its_settings_on_another_split_or_variant(run_dir):
    run = load_run(run_dir)
    test = run.make_game()
    assert (test.game, test.n_lines, test.n_distractors, test.image_size) == (
        "original",
        3,
        3,
        (16, 16),
    )
    assert len(test.labels) == len(run.make_game("test").labels)
    assert len(run.make_game("val").labels) != len(test.labels) or not torch.equal(
        run.make_game("val").cache.images(torch.arange(4)), test.cache.images(torch.arange(4))
    )
    assert run.make_game("val", game="oo-same").game == "oo-same"


def test_a_checkpoint_without_progress_or_metrics_loads_with_empty_ones(run_dir, tmp_path):
    payload = load_torch(run_dir / "last.pt")
    del payload["progress"], payload["metrics"]
    save_checkpoint(tmp_path / "bare.pt", payload)
    run = load_run(tmp_path / "bare.pt")
    assert (run.progress, run.metrics) == ({}, {})


def test_a_checkpoint_from_before_stroke_formats_loads_and_plays_lines(tmp_path):
    """Saved before `stroke_format` and the primitive/opacity/... config keys existed."""
    from fakedata import write_run

    import sketchenv
    from agents.checkpoint import read_checkpoint, save_checkpoint
    from agents.policies import AgentPolicy

    write_run(tmp_path / "new", image_size=16, lines=3)
    payload = read_checkpoint(tmp_path / "new" / "best.pt")
    del payload["game"]["stroke_format"]
    for key in ("primitive", "stroke_width", "stroke_opacity", "stroke_colour",
                "drawing_cost", "drawing_cost_kind"):  # fmt: skip
        del payload["config"][key]
    save_checkpoint(tmp_path / "old" / "best.pt", payload)
    run = load_run(tmp_path / "old")
    assert run.config.primitive == "line" and str(run.sender.stroke_format) == "line"
    policy = AgentPolicy.from_checkpoint(tmp_path / "old")
    assert "stroke_format" not in policy.env_options()
    env = sketchenv.parallel_env(**policy.env_options(split="val"))
    policy.check_env(env)
    observations, _ = env.reset(seed=0)
    assert policy(observations["sender_0"], "sender_0").shape == (3, 4)
