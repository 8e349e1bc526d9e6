"""The per-extension arch report: what a wheel holds (read from real fat binaries packed in a
wheel), the verdict against the CCA, the summary line, and the project name a source tree gives."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from torchkiln import build, buildsummary, extensions, inputs
from torchkiln.inimage import extreport

FATBINS = Path(__file__).resolve().parents[1] / "fixtures" / "fatbin"
NINE = ["sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_120", "sm_121"]


def wheel_with(tmp_path: Path, members: dict[str, Path | bytes]) -> Path:
    wheel = tmp_path / "kiln_ops-0.1.0-cp312-cp312-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            archive.writestr(name, data)
    return wheel


def test_a_wheel_holds_the_union_of_its_libraries_archs(tmp_path: Path) -> None:
    wheel = wheel_with(
        tmp_path,
        {
            "kiln_ops/_C.cpython-312-x86_64-linux-gnu.so": FATBINS / "sm86_sm90.so",
            "kiln_ops/libptx.so.1": FATBINS / "sm90_ptx90.so",
            "kiln_ops/__init__.py": b"",
            "kiln_ops/not_elf.so": b"text, not ELF",
        },
    )
    held = extreport.wheel_archs(wheel, scratch=str(tmp_path))
    assert (held.sass, held.ptx) == (["sm_86", "sm_90"], ["compute_90"])
    assert sorted(held.files) == [
        "kiln_ops/_C.cpython-312-x86_64-linux-gnu.so",
        "kiln_ops/libptx.so.1",
    ]
    assert held.errors == []
    assert list(tmp_path.iterdir()) == [wheel]  # nothing unpacked is left behind


def report(**given: object) -> dict[str, object]:
    values: dict[str, object] = {
        "name": "causal-conv1d",
        "source": "causal-conv1d==1.7.0",
        "wheel": "causal_conv1d-1.7.0-cp312-cp312-linux_x86_64.whl",
        "size": 207_000_000,
        "sass": NINE,
        "ptx": [],
        "cca": "9.0",
        "policy": "as-is",
        "asked": NINE,
        "calls": 3,
        "build_file": "setup.py",
    }
    values.update(given)
    return extreport.judge(**values)  # type: ignore[arg-type]


def test_as_is_with_the_projects_nine_archs_reads_as_the_issue_asks() -> None:
    line = extreport.describe(report())
    assert line == (
        "causal-conv1d: sm_75 sm_80 … sm_121 (9 archs) although CCA is 9.0 — its setup.py sets "
        "its own -gencode flags; 207 MB; EXTENSION_ARCHS=cca builds only 9.0"
    )
    assert extreport.problem(report()) is None  # as-is is the user's choice


def test_cca_exactly_built_says_what_it_dropped() -> None:
    built = report(sass=["sm_90"], policy="cca", size=25_000_000, asked=NINE)
    assert extreport.describe(built) == (
        "causal-conv1d: sm_90 (CCA 9.0); 25 MB; its setup.py asked for sm_75 sm_80 … sm_121, "
        "EXTENSION_ARCHS=cca compiled only the CCA"
    )
    assert built["extra"] == built["missing"] == []


def test_a_gpu_served_by_older_sass_or_by_none_is_said() -> None:
    older = report(sass=["sm_75", "sm_80"], asked=["sm_75", "sm_80"], cca="8.6;9.0", size=250_000)
    line = extreport.describe(older)
    assert "runs on 8.6 through SASS sm_80" in line
    assert "does NOT run on 9.0" in line
    assert line.endswith("0.2 MB; EXTENSION_ARCHS=cca builds only 8.6;9.0")


def test_under_cca_a_wheel_that_misses_a_gpu_fails_its_step() -> None:
    prebuilt = report(sass=["sm_75"], asked=[], calls=0, policy="cca", cca="8.6")
    trouble = extreport.problem(prebuilt)
    assert trouble and "does not run on CCA 8.6" in trouble and "prebuilt" in trouble
    assert "no nvcc call" in extreport.describe(prebuilt)
    # No CUDA code at all is no fault: a pure C++ or Python extension.
    assert extreport.problem(report(sass=[], asked=[], calls=0, policy="cca")) is None
    assert extreport.describe(report(sass=[], size=1000)) == "causal-conv1d: no CUDA code; 0.0 MB"


def test_ptx_and_arch_specific_targets_count_as_the_cca_asks() -> None:
    exact = report(sass=["sm_90a"], ptx=[], cca="9.0a", policy="cca", asked=[])
    assert exact["extra"] == exact["missing"] == []
    with_ptx = report(sass=["sm_90"], ptx=["compute_90"], cca="9.0+PTX", policy="cca", asked=[])
    assert extreport.describe(with_ptx).startswith("causal-conv1d: sm_90 + PTX compute_90 (CCA")


def test_own_targets_are_those_beyond_the_cca() -> None:
    calls = [
        {"asked": ["sm_86"], "given": ["sm_86"]},  # cpp_extension's own, from the arch list
        {"asked": [], "given": ["nvcc-default"]},
        {"asked": ["sm_75", "sm_80"], "given": ["sm_86"]},
    ]
    assert extreport.own_targets(calls, ["sm_86"]) == ["sm_75", "sm_80"]
    assert extreport.own_targets(calls[:2], ["sm_86"]) == []


def build_step_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The build log line the extension step prints for a wheel of sm_86 code."""
    wheel = wheel_with(tmp_path, {"kiln_ops/_C.so": FATBINS / "sm86.so"})
    log = tmp_path / "nvcc.jsonl"
    log.write_text(json.dumps({"asked": ["sm_75", "sm_80"], "given": ["sm_86"]}) + "\n")
    (tmp_path / "setup.py").write_text("")
    given = ["--name", "kiln-ops", "--source", "local folder 0", "--wheel", str(wheel)]
    given += ["--cca", "8.6", "--policy", "cca", "--nvcc-log", str(log), "--tree", str(tmp_path)]
    status = extreport.main(["report", *given])
    assert status == 0
    out = capsys.readouterr().out
    return f"#31 12.5 {out.splitlines()[0]}\n"


def test_the_build_step_prints_the_report_line_the_summary_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (line,) = extensions.summary_lines(build_step_log(tmp_path, capsys))
    assert line.startswith("extension:   kiln-ops: sm_86 (CCA 8.6); ")
    assert line.endswith(
        "its setup.py asked for sm_75 sm_80, EXTENSION_ARCHS=cca compiled only the CCA"
    )


@pytest.mark.parametrize(
    ("files", "name"),
    [
        ({"pyproject.toml": '[project]\nname = "kiln-ops"\nversion = "1"\n'}, "kiln-ops"),
        ({"setup.cfg": "[metadata]\nname = kiln_cfg\n", "setup.py": "setup()"}, "kiln_cfg"),
        (
            {"setup.py": 'PACKAGE_NAME = "causal_conv1d"\nsetup(name=PACKAGE_NAME)\n'},
            "causal_conv1d",
        ),
        ({"setup.py": "setup(\n    name='nerfacc',\n)\n"}, "nerfacc"),
        ({"setup.py": "setup(name=NAME)\n"}, None),
    ],
    ids=["pyproject", "setup-cfg", "package-name-constant", "literal", "unknown"],
)
def test_the_project_name_comes_from_the_source_tree(tmp_path, files, name) -> None:
    for file, text in files.items():
        (tmp_path / file).write_text(text)
    assert extreport.project_name(tmp_path) == name


def test_build_info_records_what_each_wheel_holds(tmp_path: Path) -> None:
    from torchkiln import settings, wheels

    extension = wheel_with(tmp_path, {"kiln_ops/_C.so": FATBINS / "sm90_ptx90.so"})
    plain = tmp_path / "six-1.17.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("six.py", "")
    values = settings.resolve({}, {}, {"CCA": "9.0", "EXTENSIONS": "six==1.17.0"})
    info = wheels.build_info([extension, plain], "train", values, "sha256:abc")
    entries = {entry["name"]: entry for entry in info["wheels"]}  # type: ignore[union-attr]
    assert (entries["kiln_ops"]["sass"], entries["kiln_ops"]["ptx"]) == (["sm_90"], ["compute_90"])
    assert (entries["six"]["sass"], entries["six"]["ptx"]) == ([], [])
    assert info["extension_archs"] == "cca"


def test_invoke_builds_summary_holds_the_extension_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke build`'s summary, as `invoke wheels`' (the integration tests read the latter)."""
    log = build_step_log(tmp_path, capsys)
    dotenv = {"UID": "1000", "GID": "1000", "CCA": "8.6", "CUDA_FROM": "none"}
    plan = build.plan(tmp_path, inputs.BuildOptions(), environ={}, dotenv=dotenv, cwd=tmp_path)
    text = buildsummary.summary(plan, 60, 10**9, log, gpu_here=False)
    (line,) = [line for line in text.splitlines() if line.startswith("extension:")]
    assert line.startswith("extension:   kiln-ops: sm_86 (CCA 8.6); "), text
