"""torchkiln tasks: `invoke --list` shows them; each is a few lines over the torchkiln package."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from invoke import Context, Exit, task

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))  # the checkout's package, even before pip install -e .

from torchkiln.taskkit import user_errors  # noqa: E402


@task(
    help={
        "cca": "GPU compute capabilities, e.g. 8.6 or '8.6;9.0' (default: detected)",
        "force": "rewrite an existing .env, keeping the old one as .env.<timestamp>",
        "uid": "container user id (default: yours)",
        "gid": "container group id (default: yours)",
        "usr": "container user name (default: yours, made valid)",
        "grp": "container group name (default: yours, made valid)",
    }
)
def env(
    c: Context,
    cca: str | None = None,
    force: bool = False,
    uid: str | None = None,
    gid: str | None = None,
    usr: str | None = None,
    grp: str | None = None,
) -> None:
    """Write .env from this host's facts: user, GPUs, time zone, Compose files."""
    import os

    from torchkiln import envtask

    flags = {"CCA": cca, "UID": uid, "GID": gid, "USR": usr, "GRP": grp}
    chosen = {
        name: value if value is not None else os.environ.get(name) for name, value in flags.items()
    }
    chosen["CUDA_VERSION"] = os.environ.get("CUDA_VERSION")
    with user_errors():
        for line in envtask.run(ROOT, chosen, force):
            print(line)


@task
def doctor(c: Context) -> None:
    """Check engine, Compose, buildx, GPU runtime, driver, CCA, disk and .env in seconds."""
    from torchkiln import doctor as checks

    with user_errors():
        table, failed = checks.run(ROOT)
    print(table)
    if failed:
        raise Exit("doctor: fix the ERROR rows above, then run invoke doctor again", code=1)


SERVICE_HELP = "compose service: train (default), full or ngc"


def _build_plan(c: Context, service: str, **options):
    import os

    from torchkiln import build as builder

    dotenv = builder.read_dotenv(ROOT)
    return builder.plan(ROOT, service, environ=os.environ, dotenv=dotenv, **options), dotenv


REGISTRY_HELP = {
    "builder": "buildx builder to build with (docker buildx ls; default: BUILDX_BUILDER, else "
    "the current one)",
    "cache_from": "import the build cache from REF (alone: REGISTRY_IMAGE:<service>-cache)",
}


@task(
    iterable=["source"],
    optional=["cache_from", "cache_to"],
    help={
        **REGISTRY_HELP,
        "cache_to": "export every stage's cache (mode=max) to REF (alone: "
        "REGISTRY_IMAGE:<service>-cache)",
        "push": "push the image to REGISTRY_IMAGE:<service>",
        "service": SERVICE_HELP,
        "cca": "GPU compute capabilities to build for, e.g. 8.6 (default: .env's CCA)",
        "torch": "torch release, e.g. 2.14.1; the matching torchvision is chosen",
        "source": "NAME=DIR: build from a local checkout (pytorch, vision, audio, magma); "
        "repeatable",
        "wheelhouse": "directory of wheels to install from, with no index (air-gapped)",
        "ca_bundle": "CA bundle file for downloads behind a TLS-inspecting proxy (a secret)",
        "no_cache": "rebuild every step",
        "no_up": "build only; do not start the container",
    },
)
def build(
    c: Context,
    service: str = "train",
    cca: str | None = None,
    torch: str | None = None,
    source: list[str] | None = None,
    wheelhouse: str | None = None,
    ca_bundle: str | None = None,
    no_cache: bool = False,
    no_up: bool = False,
    builder: str | None = None,
    cache_from: str | bool | None = None,
    cache_to: str | bool | None = None,
    push: bool = False,
) -> None:
    """Validate, build the service's image, start it, and print a summary."""
    from torchkiln import build as build_module

    with user_errors():
        options = dict(cca=cca, torch=torch, sources=source or [], wheelhouse=wheelhouse)
        options.update(ca_bundle=ca_bundle, no_cache=no_cache, up=not no_up, builder=builder)
        options.update(cache_from=cache_from, cache_to=cache_to, push=push)
        plan, _ = _build_plan(c, service, **options)
        build_module.run(c, ROOT, plan)


@task(
    iterable=["source"],
    optional=["cache_from"],
    help={
        **REGISTRY_HELP,
        "service": "train (default) or full",
        "dest": "directory for the wheels and BUILD-INFO.json (default: dist)",
        "cca": "as for invoke build (the same settings reuse the build's cache)",
        "torch": "as for invoke build",
        "force": "replace a non-empty --dest",
        "source": "NAME=DIR: local checkout, as for invoke build; repeatable",
        "wheelhouse": "directory of wheels, as for invoke build",
        "ca_bundle": "CA bundle file, as for invoke build",
    },
)
def wheels(
    c: Context,
    service: str = "train",
    dest: str = "dist",
    force: bool = False,
    cca: str | None = None,
    torch: str | None = None,
    source: list[str] | None = None,
    wheelhouse: str | None = None,
    ca_bundle: str | None = None,
    builder: str | None = None,
    cache_from: str | bool | None = None,
) -> None:
    """Export the built wheels with BUILD-INFO.json (sha256, versions, CCA, CUDA, base image)."""
    import os

    from torchkiln import wheels as exporter

    with user_errors():
        options = dict(cca=cca, torch=torch, sources=source or [], wheelhouse=wheelhouse)
        options.update(ca_bundle=ca_bundle, builder=builder, cache_from=cache_from)
        plan, dotenv = _build_plan(c, service, **options)
        exporter.export(c, ROOT, plan, Path(dest).resolve(), force, dotenv, os.environ)


@task(help={"service": SERVICE_HELP})
def up(c: Context, service: str = "train") -> None:
    """Start the service's container in the background (building it if missing)."""
    from torchkiln import compose

    with user_errors(), c.cd(str(ROOT)):
        c.run(shlex.join(compose.up_command(compose.check_service(service))))


@task(help={"volumes": "also remove the project's volumes"})
def down(c: Context, volumes: bool = False) -> None:
    """Stop and remove the project's containers (volumes stay unless --volumes)."""
    from torchkiln import compose

    with c.cd(str(ROOT)):
        c.run(shlex.join(compose.down_command(volumes)))


@task(help={"service": SERVICE_HELP})
def shell(c: Context, service: str = "train") -> None:
    """Open zsh in the running service as your user."""
    from torchkiln import compose

    with user_errors(), c.cd(str(ROOT)):
        c.run(shlex.join(compose.shell_command(compose.check_service(service))), pty=True)


@task(help={"service": SERVICE_HELP, "follow": "keep printing new lines"})
def logs(c: Context, service: str = "train", follow: bool = False) -> None:
    """Show the service's logs."""
    from torchkiln import compose

    with user_errors(), c.cd(str(ROOT)):
        c.run(shlex.join(compose.logs_command(compose.check_service(service), follow)))
