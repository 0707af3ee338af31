"""Launch scripts cannot run here (no cloud); they must at least parse, and pass shellcheck when present."""

import pathlib
import shutil
import subprocess

import pytest

SCRIPTS = sorted((pathlib.Path(__file__).resolve().parents[1] / "launch").glob("*.sh"))


def test_there_are_launch_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"tpu_create.sh", "tpu_setup.sh", "tpu_train.sh", "tpu_delete.sh", "gpu_train.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_scripts_fail_early_without_required_settings(tmp_path):
    # tpu_create.sh needs PROJECT; it must stop with a clear message before calling gcloud.
    result = subprocess.run(
        ["bash", str(SCRIPTS[0].parent / "tpu_create.sh")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode != 0 and "PROJECT" in result.stderr
