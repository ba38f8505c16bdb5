"""The image's install is reproducible and is what the tests run: the Dockerfile's own pip commands
(from requirements.lock, every hash checked, nothing resolved) install into a clean virtualenv, and
the `wagate` they install runs. No container engine exists on these machines, so the commands are
read from the Dockerfile and run here, on the same Python minor version as its base image."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

from .harness import ROOT

VENV = "/opt/wagate"  # the build stage's virtualenv, copied into the image


def _dockerfile_pip_commands() -> list[list[str]]:
    """The build stage's `pip install` arguments, in order (run there with the virtualenv's pip)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"RUN python -m venv {VENV}" in dockerfile and f"COPY --from=build {VENV} {VENV}" in dockerfile
    return [shlex.split(line) for line in re.findall(rf"^RUN {VENV}/bin/pip install (.+)$", dockerfile, re.M)]


def test_the_dockerfiles_install_from_the_lock_runs_wagate(tmp_path: Path) -> None:
    commands = _dockerfile_pip_commands()
    assert len(commands) == 2 and "--require-hashes" in commands[0] and "requirements.lock" in commands[0]
    assert all("--no-deps" in command for command in commands)  # nothing is resolved at build time
    base = re.search(r"^FROM python:(\d+\.\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert base is not None and base.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
    env_dir = tmp_path / "image"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir"]
    for command in commands:
        done = subprocess.run([*pip, *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    check = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout  # the lock is complete and consistent
    wagate = env_dir / "bin" / "wagate"
    helped = subprocess.run([str(wagate), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "worker" in helped.stdout, helped.stderr
    # The HEALTHCHECK's command: nothing runs here, so unhealthy, saying where it asked.
    health = subprocess.run(
        [str(wagate), "health", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "WAGATE_WEB_PORT": "1", "WAGATE_WEBHOOK_ADMIN_PORT": "2"},
    )
    assert health.returncode == 1 and "no /health answered" in health.stderr
