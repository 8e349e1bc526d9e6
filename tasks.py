"""torchkiln tasks: `invoke --list` shows them; each is a few lines over the torchkiln package."""

from __future__ import annotations

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
