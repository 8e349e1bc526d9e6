"""The build farm's containers (the `farm` stage of docker/Dockerfile): `scheduler` and `server`
write sccache-dist's configuration from the environment and the Compose secrets, then become
sccache-dist. Standard library only; the configurations are pure functions.

Secrets, as files Compose mounts (never in the image, its history or its environment):
  /run/secrets/farm_jwt_key       the scheduler's key for servers (HS256); servers sign with it
  /run/secrets/farm_client_token  the token build steps present to the scheduler
Environment:
  FARM_SCHEDULER  the scheduler's URL as servers reach it (empty: this container's own address,
                  for a server sharing the scheduler's network namespace)
  FARM_ADVERTISE  the address a server gives clients (empty: this container's own address)
  FARM_PORT       the port it listens on (the scheduler's 10600, a server's 10501, 10502…)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SECRETS = Path("/run/secrets")
STATE = Path("/var/lib/farm")
CONFIG_DIR = Path("/run/farm")
SCHEDULER_PORT = 10600
SERVER_PORT = 10501


def _toml(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def scheduler_config(port: int, client_token: str, jwt_key: str) -> str:
    """sccache-dist's scheduler.conf: clients by token, servers by tokens signed with the key."""
    return (
        f"public_addr = {_toml(f'0.0.0.0:{port}')}\n\n"
        f'[client_auth]\ntype = "token"\ntoken = {_toml(client_token)}\n\n'
        f'[server_auth]\ntype = "jwt_hs256"\nsecret_key = {_toml(jwt_key)}\n'
    )


def server_config(scheduler: str, advertise: str, token: str, state: Path = STATE) -> str:
    """sccache-dist's server.conf: the overlay builder (bubblewrap) in a folder of the state
    volume (not the container's overlay root: overlayfs cannot take an overlay upper layer)."""
    return (
        f"cache_dir = {_toml(str(state / 'toolchains'))}\n"
        f"public_addr = {_toml(advertise)}\n"
        f"scheduler_url = {_toml(scheduler)}\n\n"
        f'[builder]\ntype = "overlay"\nbuild_dir = {_toml(str(state / "build"))}\n'
        f'bwrap_path = "/usr/bin/bwrap"\n\n'
        f'[scheduler_auth]\ntype = "jwt_token"\ntoken = {_toml(token)}\n'
    )


def server_token(key: str, advertise: str) -> str:
    """The token this server presents to the scheduler, signed with the key. Values are given
    as `--option=value`: a base64url key may begin with '-', which sccache-dist's parser would
    take for an option of its own, and the server would fail at every start. A failure says
    sccache-dist's words with the key left out, never the command line that holds it."""
    command = ["sccache-dist", "auth", "generate-jwt-hs256-server-token"]
    result = subprocess.run(
        [*command, f"--secret-key={key}", f"--server={advertise}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        said = (result.stderr or result.stdout).replace(key, "****").strip().splitlines()
        raise SystemExit(
            f"torchkiln-farm: sccache-dist could not sign this server's token "
            f"(exit {result.returncode}): {said[0] if said else 'no message'}"
        )
    return result.stdout.strip()


def own_address() -> str:
    """This container's address on its network (the one other containers and build steps
    reach): the source address of a route to a public address (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        return probe.getsockname()[0]


def _secret(name: str) -> str:
    path = SECRETS / name
    try:
        text = path.read_text("utf-8").strip()
    except OSError:
        text = ""
    if not text:
        raise SystemExit(f"torchkiln-farm: the secret {name} is missing; run invoke farm up")
    return text


def main(argv: list[str] | None = None) -> int:
    """`scheduler` or `server`: write the configuration, then exec sccache-dist."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["scheduler"], ["server"]):
        print("usage: python3 -m torchkiln.inimage.farmnode scheduler|server", file=sys.stderr)
        return 2
    role = args[0]
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    config = CONFIG_DIR / f"{role}.conf"
    key = _secret("farm_jwt_key")
    if role == "scheduler":
        port = int(os.environ.get("FARM_PORT") or SCHEDULER_PORT)
        text = scheduler_config(port, _secret("farm_client_token"), key)
    else:
        port = int(os.environ.get("FARM_PORT") or SERVER_PORT)
        here = own_address()
        advertise = f"{os.environ.get('FARM_ADVERTISE') or here}:{port}"
        scheduler = os.environ.get("FARM_SCHEDULER") or f"http://{here}:{SCHEDULER_PORT}"
        token = server_token(key, advertise)
        for folder in ("toolchains", "build"):
            (STATE / folder).mkdir(parents=True, exist_ok=True)
        text = server_config(scheduler, advertise, token)
        print(f"torchkiln-farm: server {advertise}, scheduler {scheduler}", flush=True)
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.environ.setdefault("SCCACHE_LOG", "info")
    os.environ["SCCACHE_NO_DAEMON"] = "1"
    os.execvp("sccache-dist", ["sccache-dist", role, "--config", str(config)])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
