"""Long work shows where it is, and dry runs change nothing, for real: a CPU build of the fixture
sources with an extension whose compile drives ninja over 60 slow objects
(tests/fixtures/slow_compile): its [N/M] lines come through `pip wheel -v` into BuildKit's log and
reach the user as a progress line; the whole log stays in .torchkiln/; the stage times are kept
and the next build's estimate uses them; `invoke --dry build` afterwards leaves every file a
later command reads as it was, and writes no escape codes into a pipe.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid

import pytest
from projects import assert_ok, make_project, remove_project

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

EDGES = 60  # tests/fixtures/slow_compile's default: 60 objects and the archive of them


def test_a_long_compile_shows_progress_and_the_next_estimate_learns(tmp_path) -> None:
    project = make_project(tmp_path, "progress")
    try:
        fixtures = project.root / "tests" / "fixtures"
        # Sources no build has seen, so the compile steps run (and are timed) in this test.
        marked = project.root / "marked"
        for name in ("pytorch", "slow_compile"):
            shutil.copytree(fixtures / name, marked / name)
            (marked / name / "MARK").write_text(uuid.uuid4().hex, encoding="utf-8")
        args = (
            "--source", f"pytorch={marked / 'pytorch'}",
            "--source", f"vision={fixtures / 'vision'}",
            "--extension", str(marked / "slow_compile"),
        )  # fmt: skip
        output = assert_ok(project.invoke("build", "--no-up", *args))
        shown = [line for line in output.splitlines() if line.startswith("progress: ")]
        print("\n" + "\n".join(shown))
        # (the torch fixture's own little CMake build shows a line or two of its own)
        progress = [line for line in shown if line.startswith("progress: extensions: ")]
        assert len(progress) >= 5, output[-3000:]
        assert all(
            re.fullmatch(
                rf"progress: extensions: \d+/{EDGES + 1} \(\d+ %\), \d+ s elapsed"
                r"(, about \d+ (s|min) left)?",
                line,
            )
            for line in progress
        ), progress
        assert any(line.endswith(" left") for line in progress), "no time left was ever said"
        assert progress[-1].startswith(f"progress: extensions: {EDGES + 1}/{EDGES + 1} (100 %)")
        # Condensed on the screen, whole in the log the summary names.
        assert not re.search(rf"\[30/{EDGES + 1}\]", output)
        assert "log:         .torchkiln/build-train.log" in output
        log = (project.root / ".torchkiln" / "build-train.log").read_text()
        assert re.search(rf"^#\d+ [\d.]+ +\[30/{EDGES + 1}\] Building C object", log, re.M)
        assert "\r" not in output and "\x1b" not in output, "a pipe gets no terminal codes"

        timings = json.loads((project.root / ".torchkiln" / "timings.json").read_text())
        stages = {entry["stage"]: entry for entry in timings}
        assert stages["extensions-build"]["seconds"] >= EDGES * 0.5 / 2
        assert stages["torch-build"]["jobs"] == 2 and stages["torch-build"]["cuda"] is False

        again = assert_ok(project.invoke("build", "--no-up", *args))
        estimate = next(line for line in again.splitlines() if line.startswith("estimate: "))
        assert "this machine compiled torch for the CPU in " in estimate, estimate
        assert "with 2 jobs on " in estimate and "so here about " in estimate
        # The range is this machine's, not PyTorch's published hours.
        assert "(from this machine's record)" in estimate and "published" not in estimate
        assert "this machine's last extension compile took " in estimate

        # A dry run with other inputs changes nothing a later command reads.
        state = project.root / ".torchkiln"
        before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                  for path in state.iterdir() if path.name != "lock"}  # fmt: skip
        dry = assert_ok(project.invoke("--dry", "build", "--cca", "9.0", "--torch", "2.13.0"))
        assert "\x1b" not in dry, "invoke's echo is bold on a terminal only"
        assert "-f .torchkiln/dry-build-train.yaml --progress plain build train" in dry
        after = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                 for path in state.iterdir() if path.name != "lock"}  # fmt: skip
        assert {name: after[name] for name in before} == before
        assert set(after) - set(before) == {"dry-build-train.yaml"}
        record = json.loads((state / "build-train.json").read_text())["inputs"]
        assert record["cca"] is None and record["torch"] is None, record
        assert record["extensions"] == [str(marked / "slow_compile")]
    finally:
        remove_project(project)
