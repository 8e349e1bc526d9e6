"""Extension inputs, refused in seconds: empty and malformed specs, a project twice, a version the
index lacks; how --extension joins EXTENSIONS; a failed extension named by project and folder;
the summary's ccache line when compile steps ran."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from torchkiln import build, buildplan, buildsummary, extensions, inputs, settings
from torchkiln.errors import UserError


def project(tmp_path: Path, name: str, project_name: str = "") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    text = f"setup(name='{project_name}')\n" if project_name else "setup()\n"
    (folder / "setup.py").write_text(text)
    return folder


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("", "--extension '' is empty"),
        ("   ", "is empty"),
        ("six>=1.16", "is not one pinned release name==version"),
        ("six==", "is not one pinned release"),
        ("six==1.16.0 torchsort==0.1.10", "one item per --extension"),
        ("six==1.16.0,torchsort==0.1.10", "one item per --extension"),
        ("no-such-folder", "is neither name==version"),
    ],
    ids=["empty", "blank", "range", "no-version", "two-in-one", "comma", "missing-folder"],
)
def test_a_bad_extension_item_is_refused_in_one_line(tmp_path: Path, item: str, says: str) -> None:
    with pytest.raises(UserError, match=says) as refused:
        inputs.split_extensions([item], tmp_path, tmp_path / "checkout")
    assert "\n" not in str(refused.value)


def test_the_checkout_itself_and_a_folder_twice_are_refused(tmp_path: Path) -> None:
    checkout = project(tmp_path, "checkout")
    with pytest.raises(UserError, match="is this torchkiln checkout itself"):
        inputs.split_extensions(["."], checkout, checkout)
    ops = project(tmp_path, "ops")
    with pytest.raises(UserError, match="is given twice"):
        inputs.split_extensions(["ops", str(ops)], tmp_path, checkout)


@pytest.mark.parametrize(
    ("given", "configured", "specs", "notes"),
    [
        (["six==1.17.0"], "", ["six==1.17.0"], []),
        (
            ["six==1.17.0"],
            "torchsort==0.1.10",
            ["torchsort==0.1.10", "six==1.17.0"],
            ["note: building EXTENSIONS from .env (torchsort==0.1.10) as well as --extension"],
        ),
        (
            ["Six==1.17.0"],
            "six==1.16.0 torchsort==0.1.10",
            ["torchsort==0.1.10", "Six==1.17.0"],
            [
                "note: --extension Six==1.17.0 replaces six==1.16.0 of EXTENSIONS (.env)",
                "note: building EXTENSIONS from .env (torchsort==0.1.10)",
            ],
        ),
        (["six==1.17.0", "six==1.17.0"], "six==1.17.0", ["six==1.17.0"], []),
        ([], "torchsort==0.1.10", ["torchsort==0.1.10"], ["note: building EXTENSIONS"]),
    ],
    ids=["alone", "joined", "flag-version-wins", "same-twice", "folder-only"],
)
def test_extension_flags_join_the_configured_list_and_say_so(given, configured, specs, notes):
    merged, said = extensions.merge_specs(given, configured, ".env")
    assert merged == specs
    assert len(said) == len(notes)
    for line, start in zip(said, notes, strict=True):
        assert line.startswith(start)


def test_one_project_with_two_versions_is_refused_wherever_it_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="name one project twice"):
        extensions.merge_specs(["six==1.16.0", "six==1.17.0"], "", ".env")
    with pytest.raises(UserError, match=r"EXTENSIONS names six twice \(six==1.16.0 and SIX==1"):
        settings.resolve({}, {}, {"EXTENSIONS": "six==1.16.0 SIX==1.17.0"})
    folder = project(tmp_path, "conv", "causal_conv1d")
    with pytest.raises(UserError, match=r"is project causal_conv1d, which causal-conv1d==1\.7\.0"):
        extensions.check_unique(["causal-conv1d==1.7.0"], {"extension-src-0": str(folder)})


def plan(tmp_path: Path, items: list[str], dotenv: dict[str, str]) -> buildplan.BuildPlan:
    root = tmp_path / "checkout"
    root.mkdir(exist_ok=True)
    options = inputs.BuildOptions(cca="8.6", extensions=items)
    return build.plan(root, options, environ={}, dotenv=dotenv, cwd=tmp_path)


def test_the_plan_builds_both_lists_and_says_it(tmp_path: Path) -> None:
    project(tmp_path, "ops", "kiln-ops")
    built = plan(tmp_path, ["ops", "six==1.17.0"], {"EXTENSIONS": "torchsort==0.1.10"})
    assert built.values["EXTENSIONS"] == "torchsort==0.1.10 six==1.17.0"
    assert built.build_args["BUILD_EXTENSIONS"] == "1"
    assert built.contexts["extension-src-0"] == str(tmp_path / "ops")
    assert built.notes and "torchsort==0.1.10" in built.notes[0]
    assert plan(tmp_path, [], {"EXTENSIONS": "torchsort==0.1.10"}).notes == []


def test_the_extension_archs_setting_is_checked() -> None:
    assert settings.resolve({}, {}, {})["EXTENSION_ARCHS"] == "cca"
    with pytest.raises(UserError, match="EXTENSION_ARCHS 'all' is not one of cca, as-is"):
        settings.resolve({}, {}, {"EXTENSION_ARCHS": "all"})


# --- the index lookup --------------------------------------------------------------------------

VERSIONS = "six (1.17.0)\nAvailable versions: 1.17.0, 1.16.0, 1.15.0\n"


@pytest.mark.parametrize(
    ("spec", "code", "output", "says"),
    [
        ("six==1.16.0", 0, VERSIONS, None),
        ("six==1.16", 0, VERSIONS, "six 1.16 has no source distribution on the index"),
        ("nosuch==1.0", 1, "ERROR: No matching distribution found for nosuch", "no source"),
        (
            "six==1.0",
            1,
            "WARNING: Retrying … ConnectionError\nERROR: No matching distribution",
            None,
        ),
    ],
    ids=["there", "missing-version", "missing-project", "unreachable-is-no-proof"],
)
def test_pips_answer_decides(spec: str, code: int, output: str, says: str | None) -> None:
    problem = extensions.lookup_problem(spec, code, output, "on the index")
    assert problem == says if says is None else says in (problem or "")
    if problem:
        assert problem.startswith(f"--extension {spec}: ") and "\n" not in problem


def test_lookups_ask_the_builds_index_for_the_images_python(tmp_path: Path) -> None:
    values = settings.resolve(
        {}, {}, {"PIP_INDEX_URL": "https://index.example/simple", "PYTHON_VERSION": "3.11"}
    )
    values["PIP_INDEX_TOKEN"] = "s3cret"
    seen: list[tuple[list[str], dict[str, str]]] = []

    def run(command, **options):
        seen.append((command, options["env"]))
        code = 0 if command[5] == "six" else 1
        out = VERSIONS if code == 0 else "ERROR: No matching distribution found for nosuch"
        return subprocess.CompletedProcess(command, code, out, "")

    problems, warnings = extensions.index_problems(
        ["six==1.16.0", "nosuch==1.0"], values, ca_bundle="/ca.pem", run=run
    )
    assert warnings == []
    (problem,) = problems
    assert "nosuch" in problem and "s3cret" not in problem
    command, env = seen[0]
    assert command[3:6] == ["index", "versions", "six"]
    assert command[8:10] == ["--python-version", "3.11"] and "--cert" in command
    assert "--no-binary" in command and "s3cret" not in " ".join(command)
    assert env["PIP_INDEX_URL"] == "https://__token__:s3cret@index.example/simple"


def test_a_wheelhouse_is_the_only_place_looked_in() -> None:
    command = extensions.lookup_command("six==1.16.0", "3.12", wheelhouse="/w")
    assert command[-3:] == ["--no-index", "--find-links", "/w"]


# --- what the build said --------------------------------------------------------------------


def test_a_failed_extension_is_named_by_project_and_host_folder() -> None:
    log = (
        "#31 40.1 ERROR: extension kiln-ops (local folder 1) failed at compile …\n"
        '#31 40.1 torchkiln-extension-failed: {"name": "kiln-ops", "source": "local folder 1", '
        '"step": "compile (pip wheel --no-build-isolation)", "hint": "see the lines above", '
        '"folder": 1}\n'
    )
    contexts = {"extension-src-0": "/home/u/a", "extension-src-1": "/home/u/kiln_ops"}
    assert extensions.failure_line(log, contexts, ".torchkiln/build-train.log") == (
        "extension kiln-ops (/home/u/kiln_ops) failed at compile (pip wheel "
        "--no-build-isolation): see the lines above (the whole output is in "
        ".torchkiln/build-train.log)"
    )
    assert extensions.failure_line("nothing of the kind", contexts) is None


@pytest.mark.parametrize(
    ("log", "says"),
    [
        ("", "no compile step ran (BuildKit took them from its cache)"),
        (
            "torchkiln-sccache: ext hits=0 misses=0 remote_hits=0 "
            "remote_errors=0 uncached=0 local=0 dist=0 dist_errors=0 servers=- reasons=-\n",
            "1 compile step ran; no compiler call of theirs went through sccache",
        ),
        (
            "torchkiln-sccache: ext hits=2 misses=1 remote_hits=0 remote_errors=0 uncached=1 "
            "local=1 dist=0 dist_errors=0 servers=- reasons=multiple_input_files:1\n",
            "67% (2 hits, 1 misses); 1 calls sccache could not cache (multiple_input_files 1)",
        ),
    ],
    ids=["cached-steps", "bypassed", "counted"],
)
def test_the_sccache_line_counts_what_ran(log: str, says: str) -> None:
    assert buildsummary.sccache_rate(log) == says
