"""The Dockerfiles, the compose files and the settings model never disagree on a default.

A plain `docker compose build` passes build args by name only, so an unset setting falls back to
the Dockerfile's ARG default: that default must be the settings model's, and each service must
list exactly the settings that its image receives. A default written twice and drifting is the
bug this prevents (a "rebuild" that silently recompiles PyTorch for two hours).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchkiln import settings
from torchkiln.compose import PROXY_ARGS

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "train": "docker/Dockerfile",
    "full": "docker/Dockerfile",
    "ngc": "docker/ngc.Dockerfile",
}
COMPOSE = REPO / "compose" / "compose.yaml"
_ARG = re.compile(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$")


def arg_lines(text: str) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """Split a Dockerfile's ARGs into global ones (before the first FROM) and in-stage ones."""
    global_args: dict[str, str] = {}
    stage_args: list[tuple[str, str | None]] = []
    in_stage = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("FROM "):
            in_stage = True
        match = _ARG.match(stripped)
        if not match:
            continue
        name, default = match[1], match[2]
        if in_stage:
            stage_args.append((name, default))
        else:
            assert default is not None, f"global ARG {name} has no default"
            global_args[name] = default
    return global_args, stage_args


def compose_args(text: str) -> dict[str, list[str]]:
    """Read each service's build args (names only) from the compose file, without a YAML lib.

    Args are mappings of names with no value; `&anchor` blocks at the top level and `<<: *anchor`
    merges (or `args: *anchor`) are followed, in order.
    """
    anchors: dict[str, list[str]] = {}
    services: dict[str, list[str]] = {}
    target: list[str] | None = None
    indent = 0
    service = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = len(line) - len(line.lstrip())
        if target is not None and depth < indent:
            target = None
        anchor = re.match(r"^x-[a-z-]+: &([a-z-]+)\s*$", line)
        if anchor:
            target, indent = anchors.setdefault(anchor[1], []), 2
            continue
        service_match = re.match(r"^  ([a-z][a-z-]*):\s*$", line)
        if service_match and target is None:
            service = service_match[1]
            continue
        args = re.match(r"^      args:\s*(?:\*([a-z-]+))?\s*$", line)
        if args:
            services[service] = list(anchors[args[1]]) if args[1] else []
            target, indent = (None, 0) if args[1] else (services[service], 8)
            continue
        if target is None:
            continue
        merge = re.match(r"^\s+<<: \*([a-z-]+)\s*$", line)
        if merge:
            target.extend(anchors[merge[1]])
            continue
        key = re.match(r"^\s+([A-Za-z_]+):\s*$", line)
        if key and depth == indent:
            target.append(key[1])
    return services


def test_parsers_see_the_files() -> None:
    global_args, _ = arg_lines((REPO / DOCKERFILES["train"]).read_text())
    assert "CCA" in global_args and "BUILD_IMAGE" in global_args
    # The build farm's image (farm-scheduler's args) is no service a user builds.
    assert set(compose_args(COMPOSE.read_text())) == {*settings.SERVICES, "farm-scheduler"}


@pytest.mark.parametrize("dockerfile", sorted(set(DOCKERFILES.values())))
def test_dockerfile_arg_defaults_equal_the_settings(dockerfile: str) -> None:
    global_args, stage_args = arg_lines((REPO / dockerfile).read_text())
    for name, default in global_args.items():
        if name in settings.DERIVED_BUILD_ARGS:
            wanted = settings.DERIVED_DEFAULTS.get(name, "")
            assert default == wanted, f"{dockerfile}: derived ARG {name} defaults to {wanted!r}"
            continue
        assert name in settings.BY_NAME, f"{dockerfile}: ARG {name} is not a setting"
        assert default == settings.BY_NAME[name].default, (
            f"{dockerfile}: ARG {name}={default!r} but settings.py says "
            f"{settings.BY_NAME[name].default!r}"
        )
    for name, default in stage_args:
        assert default is None, f"{dockerfile}: stage ARG {name} repeats a default; declare it bare"
        assert name in global_args, f"{dockerfile}: stage ARG {name} has no global default"


@pytest.mark.parametrize("service", settings.SERVICES)
def test_every_build_arg_is_declared_in_the_dockerfile(service: str) -> None:
    global_args, _ = arg_lines((REPO / DOCKERFILES[service]).read_text())
    missing = set(settings.build_args(service)) - set(global_args)
    assert not missing, f"{DOCKERFILES[service]} lacks ARG {sorted(missing)}"


@pytest.mark.parametrize("service", settings.SERVICES)
def test_compose_args_are_the_settings_build_args(service: str) -> None:
    listed = compose_args(COMPOSE.read_text())[service]
    expected = [*settings.build_args(service), *PROXY_ARGS]
    if service in settings.SOURCE:
        expected += settings.DERIVED_BUILD_ARGS
    assert sorted(listed) == sorted(expected)
    assert len(listed) == len(set(listed)), "an arg is listed twice"


def test_compose_defaults_equal_the_settings() -> None:
    lines = [
        line
        for path in sorted((REPO / "compose").glob("*.yaml"))
        for line in path.read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = "\n".join(lines)
    found = re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", text)
    assert found, "the compose file has no ${NAME:-default}; the parser is wrong"
    for name, default in found:
        if name == "CA_BUNDLE":
            # No bundle is spelled as an empty file, the only source Compose accepts.
            assert settings.BY_NAME[name].default == ""
            assert (REPO / "compose" / default).read_bytes() == b""
            continue
        assert default == settings.BY_NAME[name].default, f"compose: ${{{name}:-{default}}}"
    # Compose values with no default are required, and say how to get them.
    for name, message in re.findall(r"\$\{([A-Z_]+):\?([^}]*)\}", text):
        assert "invoke env" in message, name


def test_drift_is_caught() -> None:
    """The parsers would notice a changed default (a test that cannot fail is a defect)."""
    text = (REPO / DOCKERFILES["train"]).read_text().replace("ARG USE_NCCL=1", "ARG USE_NCCL=0")
    global_args, _ = arg_lines(text)
    assert global_args["USE_NCCL"] != settings.BY_NAME["USE_NCCL"].default
    listed = compose_args(COMPOSE.read_text())
    assert "CCA" in listed["train"] and "DEBUG" in listed["full"] and "DEBUG" not in listed["train"]
    compose_text = COMPOSE.read_text().replace("  CCA:\n", "", 1)
    assert "CCA" not in compose_args(compose_text)["train"]
