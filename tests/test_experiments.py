"""train.experiments: the paper's configs, the smoke override, skip/resume and the results table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.checkpoint import read_checkpoint
from agents.config import load_config_file
from train import experiments
from train.experiments import (
    SMOKE,
    list_tables,
    load_table,
    resolve_config,
    results_markdown,
    run_status,
    train,
)

PAPER_TABLES = {"table1", "table2", "caltech101", "table4", "celeba"}
# A tiny budget on a tiny photo folder: 4 classes, 1 epoch of 4 steps.
TINY = {"n_distractors": 3, "image_size": 16, "epochs": 1, "batch_size": 8, "val_games": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """An ``imagefolder:`` dataset of 4 colour classes with train/val/test splits."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        for c in range(4):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                pixels[..., c % 3] = 230
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return f"imagefolder:{root}"


def tiny_config(run_name: str, out: Path, dataset: str, **changes):
    run = next(r for r in load_table("table1").runs if r.name == run_name)
    return resolve_config(run, "smoke", out, dataset=dataset, overrides=TINY | changes)


def test_every_paper_table_is_there_and_resolves_at_both_scales(tmp_path):
    assert set(list_tables()) >= PAPER_TABLES
    for name in PAPER_TABLES:
        table = load_table(name)
        assert table.runs, name
        for run in table.runs:
            full = resolve_config(run, "full", tmp_path / run.name)
            assert full.backbone == "vgg16" and full.freeze_backbone and full.lines == 20
            assert full.batch_size == 100 and full.epochs == 250 and full.lr == 1e-4
            assert full.score == "dot" and full.loss == "hinge"
            assert full.output == str(tmp_path / run.name)
            smoke = resolve_config(run, "smoke", tmp_path / run.name)
            # The experimental factor survives the smoke override.
            for key in ("game", "perceptual_coef", "perceptual_weights", "lines", "latent_size"):
                assert getattr(smoke, key) == getattr(full, key), (name, run.name, key)


def test_paper_settings_of_each_table():
    rows = {(t, r.name): r for t in PAPER_TABLES for r in load_table(t).runs}
    table1 = load_table("table1").runs
    assert [r.values["game"] for r in table1].count("oo-different") == 2
    for run in table1:
        perceptual = run.name.endswith("-perceptual")
        assert (run.values["perceptual_coef"] > 0) == perceptual
        assert run.values["dataset"] == "stl10" and run.values["image_size"] == 96
        assert run.paper is not None and run.paper_std is not None
    assert rows["table1", "original"].paper == pytest.approx(71.8)
    # Table 2: one-hot perceptual weights, each block once per game.
    for game in ("original", "oo-different"):
        hot = [rows["table2", f"{game}-{tap}"].values["perceptual_weights"] for tap in
               ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")]  # fmt: skip
        assert np.array_equal(np.array(hot), np.eye(5))
    wide = rows["caltech101", "oo-different-wide"].values
    assert wide["latent_size"] == 1024 and wide["image_size"] == 128
    assert rows["table4", "stylized"].values["weights"].startswith("stylized:")
    assert rows["table4", "imagenet"].values["weights"] == "imagenet"
    assert {r.values["image_size"] for r in load_table("celeba").runs} == {112}


def test_config_files_run_directly_with_train_selfplay():
    """The run files are plain train.selfplay --config files (no extra sections)."""
    from train.selfplay import resolve_config as selfplay_resolve

    path = load_table("table1").runs[0].path
    config, resumed = selfplay_resolve(["--config", str(path), "--output", "x"])
    assert resumed is None and config.dataset == "stl10"
    assert "paper" not in load_config_file(path)


def test_smoke_override_and_flags(tmp_path, folder):
    run = load_table("table4").runs[0]
    smoke = resolve_config(run, "smoke", tmp_path)
    for key, value in SMOKE.items():
        assert getattr(smoke, key) == value, key
    mine = resolve_config(run, "smoke", tmp_path, dataset=folder, overrides={"epochs": 3})
    assert mine.dataset == folder and mine.epochs == 3
    with pytest.raises(ValueError, match="scale"):
        resolve_config(run, "medium", tmp_path)
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config(run, "smoke", tmp_path, overrides={"epoch": 3})


def test_bad_tables_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"unknown table 'nope'.*table1"):
        load_table("nope")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "table.toml").write_text('title = "t"\n[runs.a]\nlabel = "A"\n')
    (tmp_path / "mine" / "b.toml").write_text('game = "original"\n')
    with pytest.raises(ValueError, match=r"lists runs \['a'\].*config files are \['b'\]"):
        load_table("mine", tmp_path)
    (tmp_path / "mine" / "b.toml").rename(tmp_path / "mine" / "a.toml")
    assert load_table("mine", tmp_path).runs[0].label == "A"
    (tmp_path / "mine" / "a.toml").write_text('game = "tennis"\n')
    with pytest.raises(ValueError, match=r"a\.toml is not a valid train.selfplay config.*game"):
        load_table("mine", tmp_path)


def test_interrupted_run_resumes_and_finished_run_is_skipped(tmp_path, folder):
    out = tmp_path / "original"
    # A run stopped after 2 of its 4 steps (as by a kill after a checkpoint).
    assert train(tiny_config("original", out, folder, max_steps=2)) == "finished"
    config = tiny_config("original", out, folder)
    assert run_status(config) == "interrupted"
    assert train(config) == "finished"
    saved = read_checkpoint(out, which="last")
    assert saved["progress"]["step"] == 4 and saved["progress"]["epoch"] == 1
    assert [row["step"] for row in saved["history"]] == [2, 4]  # one history, continued
    # Finished: nothing is trained again.
    stamp = (out / "last.pt").stat().st_mtime_ns
    assert train(config) == "finished"
    assert (out / "last.pt").stat().st_mtime_ns == stamp
    # Another config in the same folder is refused, not mixed in.
    with pytest.raises(ValueError, match=r"other settings.*lines"):
        run_status(tiny_config("original", out, folder, lines=5))
    # Defaults the trainer filled in (sigma2 for 16 px, weights) match only themselves.
    assert saved["config"]["sigma2"] != 5e-4
    with pytest.raises(ValueError, match=r"other settings.*sigma2"):
        run_status(tiny_config("original", out, folder, sigma2=5e-4))


def test_results_markdown_rows(tmp_path):
    table = load_table("table1")
    configs = {r.name: resolve_config(r, "smoke", tmp_path / r.name) for r in table.runs}
    full_configs = {r.name: resolve_config(r, "full", tmp_path / r.name) for r in table.runs}
    rows = {
        r.name: {"comm_rate": 0.5 + i / 100, "comm_rate_std": 0.02, "class_rate": 0.75,
                 "chance": 0.01 if r.values["game"] == "original" else 1 / 12,
                 "steps": 200, "epochs": 2}
        for i, r in enumerate(table.runs)
    }  # fmt: skip
    text = results_markdown(table, table.runs, configs, rows, "smoke")
    assert "Smoke scale" in text
    body = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(body) == 1 + len(table.runs)  # header + one row per run, in table order
    assert [line.split(" | ")[0][2:] for line in body[1:]] == [r.name for r in table.runs]
    first = body[1]
    assert "71.8 ± 6.1 %" in first and "50.0 ± 2.0 %" in first and "1.0 %" in first
    assert "200 steps, 2 epochs" in first
    assert "69.57 ± 2.6 %" in body[2]  # the paper's numbers as printed
    full = results_markdown(table, table.runs, full_configs, rows, "full")
    assert "Smoke" not in full and "`vgg16` (imagenet weights, frozen)" in full
    # Run notes of table.toml appear under the table.
    caltech = load_table("caltech101")
    configs = {r.name: resolve_config(r, "full", tmp_path / r.name) for r in caltech.runs}
    text = results_markdown(
        caltech, caltech.runs, configs, {r.name: {} for r in caltech.runs}, "full"
    )
    assert "- original: the ImageNet run of Table 4" in text


def test_list_and_cli_errors(capsys):
    assert experiments.main(["--list"]) is None
    listed = capsys.readouterr().out
    assert "table1:" in listed and "oo-different-perceptual" in listed and "71.8" in listed
    with pytest.raises(ValueError, match="unknown table 'table9'"):
        experiments.main(["table9"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        experiments.main(["table1", "--set", "epochs"])
    with pytest.raises(ValueError, match="threads must be >= 0"):
        experiments.main(["table1", "--threads", "-1"])


def test_command_line_overrides():
    argv = ["table1", "--data-root", "/data", "--download", "--set", "lr=0.01", "--set=x=a b"]
    args = experiments.build_parser().parse_args(argv)
    assert experiments._overrides(args) == {
        "data_root": "/data", "download": True, "lr": 0.01, "x": "a b"
    }  # fmt: skip


def test_whole_table_pipeline(tmp_path, folder, capsys):
    """The command trains, evaluates and writes results.md, results.json and sketches.png;
    run again, it trains and evaluates nothing."""
    pytest.importorskip("train.evaluate")
    argv = ["table1", "--output", str(tmp_path), "--dataset", folder, "--runs", "oo-same"]
    argv += [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    root = experiments.main(argv)
    assert root == tmp_path / "table1"
    text = (root / "results.md").read_text()
    assert text.startswith("## Table 1") and "smoke scale" in text
    rows = [line for line in text.splitlines() if line.startswith("| oo")]
    assert len(rows) == 1 and rows[0].startswith("| oo-same | OO same, l_game | oo-same |")
    summary = json.loads((root / "results.json").read_text())
    result = summary["runs"]["oo-same"]["results"]
    assert 0 <= result["comm_rate"] <= 1 and result["steps"] == 4 and result["chance"] == 0.25
    assert result["games"] == 16  # one pass over the 16 test images
    with Image.open(root / "sketches.png") as figure:
        assert figure.height == 2 * 64  # test images + one row per run
    stamps = {p: p.stat().st_mtime_ns for p in (root / "oo-same").rglob("*.*")}
    capsys.readouterr()
    experiments.main(argv)
    assert "(finished)" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_visual_system_table_pretrains_its_own_visual_systems(tmp_path):
    table = load_table("visual-system")
    assert set(table.pretraining) == {"supervised", "barlow"}
    assert len(table.runs) == 12
    paths = {name: f"/w/{name}.pt" for name in table.pretraining}
    for run in table.runs:
        for scale in ("full", "smoke"):
            config = resolve_config(run, scale, tmp_path, pretrained=paths)
            system = run.name.split("-")[-2 if run.name.endswith("perceptual") else -1]
            assert config.weights == {"scratch": "none"}.get(system, paths.get(system))
            assert config.freeze_backbone == (system != "scratch")
            assert (config.perceptual_coef > 0) == run.name.endswith("-perceptual")
            assert config.perceptual_net == "agents"
        if run.values["weights"].startswith("pretrain:"):
            with pytest.raises(ValueError, match=r"names no \[pretrain\."):
                resolve_config(run, "smoke", tmp_path)  # no weights file given for it
    smoke = experiments.resolve_pretrain_config(table.pretraining["barlow"], "smoke", tmp_path)
    assert smoke.method == "barlow" and smoke.dataset == "shapes" and smoke.image_size == 32
    full = experiments.resolve_pretrain_config(table.pretraining["barlow"], "full", tmp_path)
    assert full.backbone == "vgg16" and full.dataset == "stl10"


def test_table_with_pretraining_runs_it_first_and_once(tmp_path, folder, monkeypatch, capsys):
    tiny_pretraining = {"batch_size": 8, "epochs": 1, "image_size": 16, "backbone_width": 4}
    monkeypatch.setattr(
        experiments, "SMOKE_PRETRAIN", experiments.SMOKE_PRETRAIN | tiny_pretraining
    )
    argv = ["visual-system", "--output", str(tmp_path), "--dataset", folder]
    argv += ["--runs", "oo-different-supervised", "--set=backbone_width=4"]
    argv += [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    root = experiments.main(argv)
    weights = root / "pretrain-supervised" / "weights.pt"
    saved = read_checkpoint(root / "oo-different-supervised", which="last")["config"]
    assert saved["weights"] == str(weights) and saved["freeze_backbone"] is True
    assert (root / "pretrain-barlow" / "weights.pt").is_file()
    text = (root / "results.md").read_text()
    assert "pretrain-supervised, frozen" not in text  # one visual system: no extra column
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    experiments.main(argv)
    assert weights.stat().st_mtime_ns == stamp  # finished pretraining is not redone
