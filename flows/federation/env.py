"""The Flower environment: a virtual environment of its own holding flwr and what a client trains with
(components/federated/requirements-flower.txt), beside the pipeline's `.venv`.

Why apart: every flwr release from 1.25 to 1.42 pins protobuf below 7 (the pipeline has 7.36), 1.33 on pin
fastapi 0.138 and starlette 1.3 where Prefect 3.9 needs fastapi 0.139 or later, all pin typer below 0.21,
1.30-1.39 pin cryptography below 47 (dvc's asyncssh needs 48), the older ones rich below 14 and click below
8.2 (import-linter, gto). No flwr fits the pipeline's environment without downgrading what it runs on
(docs/federated.md has the measurements). The repository's own code reaches the Flower processes through
PYTHONPATH (`flows.federation.runtime`), so nothing of the project is installed here.

    python -m flows.federation.env .venv-flower     # what `make federate-env` runs; a no-op when up to date
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

from flows.federation.runtime import FlowerEnv

REQUIREMENTS = Path(__file__).resolve().parents[2] / "components" / "federated" / "requirements-flower.txt"
STAMP = ".installed"
TORCH = "torch==2.13.0"  # first and pinned: an unpinned torch pulls a multi-GB CUDA build


def wanted(requirements: Path = REQUIREMENTS) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def ensure(path: Path, requirements: Path = REQUIREMENTS, quiet: bool = True) -> FlowerEnv:
    """The Flower environment at `path`, created or brought up to date when the requirements changed."""
    path = Path(path).resolve()
    stamp = path / STAMP
    if stamp.is_file() and stamp.read_text().strip() == wanted(requirements):
        return FlowerEnv.at(path)
    if not (path / "bin" / "python").exists():
        venv.create(path, with_pip=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"] + (["--quiet"] if quiet else [])
    subprocess.run([*pip[:4], "install", *pip[4:], TORCH], check=True)
    subprocess.run([*pip[:4], "install", *pip[4:], "-r", str(requirements)], check=True)
    stamp.write_text(wanted(requirements))
    return FlowerEnv.at(path)


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv-flower"), quiet=False).bin)
