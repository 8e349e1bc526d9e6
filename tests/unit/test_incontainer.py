"""Arguments of nox -s smoke / bench: the service is taken out, the rest passes through."""

import pytest

from torchkiln import incontainer
from torchkiln.errors import UserError


@pytest.mark.parametrize(
    ("args", "service", "rest"),
    [
        ([], "train", []),
        (["--allow-cpu"], "train", ["--allow-cpu"]),
        (["--service", "ngc", "--json"], "ngc", ["--json"]),
        (["--json", "--service=full"], "full", ["--json"]),
    ],
    ids=["default", "passthrough", "service-flag", "service-equals"],
)
def test_split_service(args, service, rest):
    assert incontainer.split_service(args) == (service, rest)


def test_unknown_service_refused():
    with pytest.raises(UserError, match="service 'gpu' does not exist"):
        incontainer.split_service(["--service", "gpu"])


def test_module_command_runs_once_without_deps_and_tty():
    command = incontainer.module_command("smoke", "train", ["--allow-cpu"])
    assert command[:3] == ["docker", "compose", "run"]
    assert {"--rm", "--no-deps", "-T"} <= set(command)
    assert command[-4:] == ["python", "-m", "torchkiln.smoke", "--allow-cpu"]
