"""The build's main choices as flags of invoke build, with the precedence of every flag."""

import subprocess
import sys
from pathlib import Path

import pytest

from torchkiln import build, inputs
from torchkiln.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
DOTENV = {"CCA": "8.6", "BUILD_MODE": "source", "CUDA_FROM": "image"}


def planned(tmp_path: Path, environ: dict, **options):
    given = inputs.BuildOptions(**options)
    return build.plan(tmp_path, given, environ=environ, dotenv=DOTENV, cwd=tmp_path)


@pytest.mark.parametrize(
    ("environ", "options", "mode", "cuda"),
    [
        ({}, {}, "source", "image"),
        ({"BUILD_MODE": "torch-wheel"}, {}, "torch-wheel", "image"),
        ({"BUILD_MODE": "torch-wheel"}, {"build_mode": "wheels"}, "wheels", "image"),
        ({"CUDA_FROM": "pypi"}, {"cuda_from": "none"}, "source", "none"),
        ({}, {"build_mode": "wheels", "cuda_from": "pypi"}, "wheels", "pypi"),
    ],
    ids=["env-file", "environment", "flag-over-environment", "cuda-flag", "both-flags"],
)
def test_build_mode_and_cuda_from_flags_win_over_environment_and_env_file(
    tmp_path, environ, options, mode, cuda
):
    plan = planned(tmp_path, environ, **options)
    assert plan.build_args["BUILD_MODE"] == mode and plan.build_args["CUDA_FROM"] == cuda


@pytest.mark.parametrize(
    ("options", "words"),
    [({"build_mode": "binary"}, ["BUILD_MODE 'binary'"]), ({"cuda_from": "cuda"}, ["CUDA_FROM"])],
    ids=["bad-mode", "bad-cuda-from"],
)
def test_a_bad_flag_value_is_one_line_naming_the_setting(tmp_path, options, words):
    with pytest.raises(UserError) as caught:
        planned(tmp_path, {}, **options)
    for word in words:
        assert word in str(caught.value)


def test_the_flags_are_in_invoke_build_help_and_recorded_for_invoke_wheels(tmp_path):
    shown = subprocess.run(
        [sys.executable, "-m", "invoke", "--help", "build"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "--build-mode" in shown.stdout and "--cuda-from" in shown.stdout
    assert "wheels (official wheels only" in " ".join(shown.stdout.split())
    options = inputs.BuildOptions.from_flags({"build_mode": "wheels", "cuda_from": "none"})
    assert options.inputs()["build_mode"] == "wheels" and options.inputs()["cuda_from"] == "none"
