"""The command line's answers to bad input: a message naming the problem and a distinct exit code."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "miniaturize"
REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_bad_params_exit_2_naming_each_key():
    done = run("run", "--set", "distill.alpha=3", "--set", "foo.bar=1")
    assert done.returncode == 2
    assert "distill.alpha" in done.stderr and "unknown key 'foo'" in done.stderr


def test_missing_data_file_and_unknown_stage_and_profile(tmp_path):
    done = run("run", "--data", str(tmp_path / "nope.csv"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    done = run("stage", "bogus")
    assert done.returncode == 2 and "unknown stage 'bogus'" in done.stderr
    done = run("run", "--profile", "fastest")
    assert done.returncode == 2 and "unknown profile 'fastest'" in done.stderr
