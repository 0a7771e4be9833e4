"""An ordinary install works: `pip install .` (a wheel, not editable), then the bundled model
is found from any folder, because it ships inside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_runs_passkey_test_from_another_folder(tmp_path):
    env_dir = tmp_path / "venv"
    # the venv sees this interpreter's packages (torch...) so nothing is downloaded; the
    # package itself is built as a wheel and installed into the venv
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    wheels = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(ROOT)]
    # this interpreter's setuptools when it can build wheels (no download); else pip's isolated
    # build, which fetches setuptools from the package index (a venv's bundled one may be too old)
    build = subprocess.run(cmd + ["--no-build-isolation"], capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("infini-*.whl")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run([str(py), "-c", "import infini_cli, sys; print(infini_cli.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(env_dir) in where.stdout, "the test must run the installed copy, not the source tree"
    env = {k: v for k, v in os.environ.items() if k not in ("INFINI_MODEL", "PYTHONPATH")}
    run = subprocess.run([str(env_dir / "bin" / "infini"), "passkey-test", "--lengths", "1k", "--depths", "0,1",
                          "--trials", "1", "--threads", "1", "--json"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert summary["model"].startswith(str(env_dir)) and summary["model"].endswith("infini-mini.safetensors")
    assert summary["accuracy"] == 1.0

