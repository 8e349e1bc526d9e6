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
        "build_mode": "source (compile torch for CCA), torch-wheel (official torch, the rest "
        "compiled) or wheels (official wheels only, minutes; default: .env's BUILD_MODE)",
        "cuda_from": "where CUDA comes from: image (nvidia/cuda base), pypi (NVIDIA's wheels "
        "from the Python index) or none (a CPU image; default: .env's CUDA_FROM)",
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
    build_mode: str | None = None,
    cuda_from: str | None = None,
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
    import os

    from torchkiln import build as build_module

    flags = dict(locals())
    with user_errors():
        built = build_module.prepare(ROOT, flags, os.environ)
        if built.options.up:  # `up` would recreate a container another checkout runs in the project
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

    flags = dict(locals())
    with user_errors():
        # The inputs not given are the last build's (said in one line).
        plan = build_module.prepare(ROOT, flags, os.environ, recorded=True)
        proxies = {name: os.environ[name] for name in exporter.PROXY_NAMES if name in os.environ}
        exporter.export_wheels(c, ROOT, plan, Path(dest).resolve(), force, proxies)


def _built(c: Context, service: str, action: str) -> str:
    """Check the service name, .env and the shell's Compose variables, that no other checkout
    shares the project, and that the image exists (skipped by invoke --dry)."""
    from torchkiln import checkout, incontainer, inputs

    inputs.check_service(service)
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


@task(
    positional=["action"],
    help={
        "action": "up (deploy the train service to this engine's swarm), check (run the "
        "multi-node check there) or down (remove this project's stack)",
        "nodes": "with up: how many nodes the service runs on, one replica each",
        "allow_cpu": "with up: no GPU reservation, replicas may share a node; gloo on the CPU",
        "project_path": "with up: the project's path on every node (a shared file system); "
        "default: a named volume on each node",
    },
)
def stack(
    c: Context, action: str, nodes: int = 0, allow_cpu: bool = False, project_path: str = ""
) -> None:
    """Docker Swarm for several machines: stack up --nodes N | stack check | stack down."""
    from torchkiln import stack as swarm

    with user_errors():
        dry = bool(c.config.run.dry)
        print(swarm.run_action(ROOT, action, nodes, allow_cpu, project_path, dry))


@task(
    positional=["action"],
    help={
        "action": "up (a scheduler and a build server here, and the farm's tokens), join (a "
        "build server here for the farm at URL), status (servers, cores, jobs, completed "
        "compiles) or down (stop this machine's part)",
        "url": "with join: the farm's scheduler, http://HOST:10600",
        "key_file": "with join: a copy of the first machine's .torchkiln/farm/jwt-key",
        "token_file": "with join: a copy of the first machine's .torchkiln/farm/client-token",
        "port": "with join: the port this server listens on (default 10501)",
        "address": "with join: the address clients reach this server at (default: its own)",
    },
)
def farm(
    c: Context,
    action: str,
    url: str = "",
    key_file: str = "",
    token_file: str = "",
    port: int = 10501,
    address: str = "",
) -> None:
    """The build farm (sccache-dist): farm up | farm join --url URL | farm status | farm down."""
    import os

    from torchkiln import checkout, inputs, settings
    from torchkiln import farm as buildfarm

    with user_errors():
        if action in ("up", "join"):
            checkout.guard(ROOT, action=f"invoke farm {action}")
        values = settings.resolve(environ=os.environ, dotenv=inputs.read_dotenv(ROOT))
        join = buildfarm.JoinOptions(url, key_file, token_file, port, address)
        print(buildfarm.run_action(ROOT, action, values, join))


# invoke's own echo (`invoke --dry …`) is bold on a terminal; files and pipes get plain text.
from invoke import Collection  # noqa: E402

from torchkiln.taskkit import echo_format  # noqa: E402

ns = Collection.from_module(sys.modules[__name__])
ns.configure({"run": {"echo_format": echo_format()}})
