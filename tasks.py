"""torchkiln tasks: `invoke --list` shows them; each is a few lines over the torchkiln package."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from invoke import Context, Exit
from invoke import task as invoke_task

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))  # the checkout's package, even before pip install -e .

from torchkiln.taskkit import user_errors  # noqa: E402


def task(*args, **kwargs):
    """invoke's @task without automatic short flags: they took -h from --cache-from and made
    '-_' of --no-up; -h stays help on every task."""
    if args and callable(args[0]):
        return invoke_task(args[0], auto_shortflags=False)
    return invoke_task(*args, auto_shortflags=False, **kwargs)


@task(
    help={
        "cca": "GPU compute capabilities, e.g. 8.6 or '8.6;9.0' (default: detected)",
        "force": "rewrite an existing .env, keeping your own settings and the old file as "
        ".env.<timestamp>",
        "cpu": "build for the CPU: official CPU wheels on a plain Ubuntu image, no CUDA",
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
    cpu: bool = False,
    uid: str | None = None,
    gid: str | None = None,
    usr: str | None = None,
    grp: str | None = None,
) -> None:
    """Write .env from this host's facts: user, GPUs, time zone, Compose files."""
    import os

    from torchkiln import envtask

    flags = {"CCA": cca, "UID": uid, "GID": gid, "USR": usr, "GRP": grp}
    with user_errors():
        for line in envtask.write_env(ROOT, flags, os.environ, force, cpu):
            print(line)


@task
def doctor(c: Context) -> None:
    """Check engine, Compose, buildx, GPU runtime, driver, CCA, disk and .env in seconds."""
    from torchkiln import doctor as checks

    with user_errors():
        table, failed = checks.check_host(ROOT)
    print(table)
    if failed:
        raise Exit("doctor: fix the ERROR rows above, then run invoke doctor again", code=1)


SERVICE_HELP = "compose service: train (default), full or ngc"


def _build_plan(options):
    import os

    from torchkiln import build as builder

    dotenv = builder.read_dotenv(ROOT)
    # The indexes are probed in seconds: a TLS-inspecting network gets its CA bundle here.
    planned = builder.plan(ROOT, options, environ=os.environ, dotenv=dotenv)
    return builder.with_host_ca(planned, os.environ)


REGISTRY_HELP = {
    "builder": "buildx builder to build with (docker buildx ls; default: BUILDX_BUILDER, else "
    "the current one)",
    "cache_from": "import the build cache from REF (alone: REGISTRY_IMAGE:<service>-cache)",
}


EXTENSION_HELP = (
    "a CUDA extension to compile for CCA against the image's torch: name==version (its source "
    "distribution, e.g. torch-scatter==2.1.2) or a local source folder; repeatable"
)


@task(
    iterable=["source", "extension"],
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
        "extension": EXTENSION_HELP,
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
    extension: list[str] | None = None,
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

    options = build_module.BuildOptions.from_flags(locals())
    with user_errors():
        built = _build_plan(options)
        if options.up:  # `up` would recreate a container another checkout runs in the project
            from torchkiln import checkout

            # An engine that does not answer is named by the build's own preflight.
            checkout.guard(ROOT, action="invoke build (its up step)", engine_errors=False)
        build_module.build_service(c, built)


@task(
    iterable=["source", "extension"],
    optional=["cache_from"],
    help={
        **REGISTRY_HELP,
        "service": "train (default) or full",
        "dest": "directory for the wheels and BUILD-INFO.json (default: dist)",
        "cca": "as for invoke build (default: the last build's)",
        "torch": "as for invoke build (default: the last build's)",
        "force": "replace an earlier export in --dest (nothing else is ever deleted)",
        "source": "NAME=DIR: local checkout, as for invoke build (default: the last build's)",
        "extension": "as for invoke build (default: the last build's)",
        "wheelhouse": "directory of wheels, as for invoke build (default: the last build's)",
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
    extension: list[str] | None = None,
    wheelhouse: str | None = None,
    ca_bundle: str | None = None,
    builder: str | None = None,
    cache_from: str | bool | None = None,
) -> None:
    """Export the built wheels with BUILD-INFO.json (sha256, versions, CCA, CUDA, base image)."""
    import os

    from torchkiln import build as build_module
    from torchkiln import wheels as exporter

    given = build_module.BuildOptions.from_flags(locals())
    with user_errors():
        options, note = build_module.with_recorded_inputs(ROOT, given)
        if note:
            print(note)
        proxies = {name: os.environ[name] for name in exporter.PROXY_NAMES if name in os.environ}
        plan = _build_plan(options)
        exporter.export_wheels(c, ROOT, plan, Path(dest).resolve(), force, proxies)


def _built(c: Context, service: str, action: str) -> str:
    """Check the service name, .env and the shell's Compose variables, that no other checkout
    shares the project, and that the image exists (skipped by invoke --dry)."""
    from torchkiln import checkout, compose, incontainer

    compose.check_service(service)
    checkout.guard(ROOT, action=action)
    if not c.config.run.dry:
        incontainer.require_built(ROOT, service)
    return service


@task(help={"service": SERVICE_HELP})
def up(c: Context, service: str = "train") -> None:
    """Start the service's container in the background (its image must be built)."""
    from torchkiln import compose

    with user_errors(), c.cd(str(ROOT)):
        c.run(shlex.join(compose.up_command(_built(c, service, "invoke up"))))


@task(help={"volumes": "also remove the project's volumes"})
def down(c: Context, volumes: bool = False) -> None:
    """Stop and remove the project's containers (volumes stay unless --volumes)."""
    from torchkiln import checkout, compose

    with user_errors(), c.cd(str(ROOT)):
        checkout.guard(ROOT, action="invoke down")
        c.run(shlex.join(compose.down_command(volumes)))


@task(help={"service": SERVICE_HELP})
def shell(c: Context, service: str = "train") -> None:
    """Open zsh in the running service as your user."""
    from torchkiln import compose

    with user_errors(), c.cd(str(ROOT)):
        c.run(shlex.join(compose.shell_command(_built(c, service, "invoke shell"))), pty=True)


@task(help={"service": SERVICE_HELP, "follow": "keep printing new lines"})
def logs(c: Context, service: str = "train", follow: bool = False) -> None:
    """Show the service's logs (and where the last build's log is when it logged nothing)."""
    from torchkiln import compose

    with user_errors(), c.cd(str(ROOT)):
        command = compose.logs_command(_built(c, service, "invoke logs"), follow)
        shown = c.run(shlex.join(command), warn=True)
        if shown is not None and shown.ok and not shown.stdout.strip():
            print(compose.no_logs_note(service, ROOT))


@task(
    help={
        "cache": "the BuildKit cache of torchkiln builds (layers; sccache, pip, apt mounts): "
        "shared by every checkout on the engine, so it says what it holds and removes it only "
        "with --all-checkouts",
        "all_checkouts": "with --cache: remove that cache, every checkout's",
        "dist": "also remove the wheels an invoke wheels export left in dist/",
    }
)
def clean(c: Context, cache: bool = False, dist: bool = False, all_checkouts: bool = False) -> None:
    """Remove this checkout's containers and images (untagged ones too); nothing of others'."""
    from torchkiln import clean as cleaner

    with user_errors(), c.cd(str(ROOT)):
        target = ROOT / "dist" if dist else None
        for line in cleaner.clean_project(c, ROOT, cache, target, all_checkouts):
            print(line)


def _farm_values() -> dict[str, str]:
    import os

    from torchkiln import build, settings

    return settings.resolve(environ=os.environ, dotenv=build.read_dotenv(ROOT))


@task
def farm_up(c: Context) -> None:
    """Start the build farm here: a scheduler and a build server (docs/farm.md)."""
    from torchkiln import checkout, farm

    with user_errors():
        checkout.guard(ROOT, action="invoke farm.up")
        print("\n".join(farm.up(ROOT, _farm_values())))


@task(
    help={
        "url": "the farm's scheduler, http://HOST:10600",
        "key_file": "a copy of the first machine's .torchkiln/farm/jwt-key",
        "token_file": "a copy of the first machine's .torchkiln/farm/client-token",
        "port": "the port this server listens on (default 10501)",
        "address": "the address clients reach this server at (default: its own)",
    },
)
def farm_join(
    c: Context, url, key_file: str = "", token_file: str = "", port: int = 10501, address: str = ""
) -> None:
    """Start a build server here that works for the farm at URL (docs/farm.md)."""
    from torchkiln import checkout, farm

    with user_errors():
        checkout.guard(ROOT, action="invoke farm.join")
        here = farm.farm_dir(ROOT)
        keys = key_file or str(here / farm.KEY_FILE), token_file or str(here / "client-token")
        print(farm.join(ROOT, url, *keys, port, address))


@task
def farm_status(c: Context) -> None:
    """Show the farm's servers, cores, jobs in progress and this machine's completed counts."""
    from torchkiln import farm

    with user_errors():
        print("\n".join(farm.status(ROOT, _farm_values())))


@task
def farm_down(c: Context) -> None:
    """Stop this machine's part of the build farm (the tokens stay)."""
    from torchkiln import farm

    with user_errors():
        print(farm.down(ROOT))


# invoke's own echo (`invoke --dry …`) is bold on a terminal; files and pipes get plain text.
from invoke import Collection  # noqa: E402

from torchkiln.taskkit import echo_format  # noqa: E402

ns = Collection.from_module(sys.modules[__name__])
# The build farm: invoke farm.up, farm.join URL, farm.status, farm.down.
farm_tasks = Collection("farm")
for _name in ("up", "join", "status", "down"):
    farm_tasks.add_task(ns.tasks.pop(f"farm-{_name}"), name=_name)
ns.add_collection(farm_tasks)
ns.configure({"run": {"echo_format": echo_format()}})
