"""The installed package: a wheel built from the tree works from any folder."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_its_commands_run_from_another_folder(tmp_path):
    """Build the wheel, install it alone into a fresh venv (its dependencies borrowed from
    this environment through a .pth file, so torch is not installed twice), then run the
    console scripts and the shipped experiment configs from an empty folder."""
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", ROOT,
        cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("sketchenv-*.whl")
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    )
    # A plain path line: this environment's packages, but not its editable sketchenv.
    (Path(site.strip()) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import sketchenv, train; print(sketchenv.__file__)", cwd=elsewhere)
    assert str(env_dir) in where and str(ROOT) not in where  # the wheel's copy, not the tree
    listing = run(env_dir / "bin" / "sketchenv-experiments", "--list", cwd=elsewhere)
    assert "table1" in listing and "visual-system" in listing
    run(python, "-m", "train.experiments", "--list", cwd=elsewhere)
    out = elsewhere / "run"
    run(env_dir / "bin" / "sketchenv-selfplay", "--config", "experiments/table1/original.toml",
        "--dataset", "shapes", "--image-size", "32", "--backbone", "small", "--weights", "none",
        "--n-distractors", "9",
        "--max-steps", "2", "--val-games", "20", "--output", out, cwd=elsewhere)  # fmt: skip
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["lines"] == 20 and config["epochs"] == 250  # read from the shipped file
    assert (out / "last.pt").is_file()
    run(python, "-c", "import train.serve", cwd=elsewhere)  # the study page's files are there
    assert (Path(site.strip()) / "train" / "web" / "study.js").is_file()
