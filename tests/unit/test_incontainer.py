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


SOURCE_LABELS = {
    "io.torchkiln.pytorch-version": "2.14.1",
    "io.torchkiln.cca": "8.6;9.0",
    "io.torchkiln.build-mode": "source",
}


def test_labels_become_expectations():
    assert incontainer.expectations(SOURCE_LABELS, []) == [
        "--expect-torch", "2.14.1", "--expect-cca", "8.6;9.0",
    ]  # fmt: skip


def test_wheels_mode_expects_no_cca_and_user_flags_win():
    wheels = {**SOURCE_LABELS, "io.torchkiln.build-mode": "wheels", "io.torchkiln.extensions": ""}
    assert incontainer.expectations(wheels, []) == ["--expect-torch", "2.14.1"]
    given = ["--expect-torch", "2.14.0", "--expect-cca", "9.0"]
    assert incontainer.expectations(SOURCE_LABELS, given) == []


@pytest.mark.parametrize(
    ("mode", "extensions"),
    [("torch-wheel", ""), ("wheels", "causal-conv1d==1.7.0"), ("source", "../my_ops")],
    ids=["torch-wheel", "wheels with an extension", "source with an extension"],
)
def test_the_cca_label_drives_the_audit_when_something_was_compiled_for_it(mode, extensions):
    labels = {
        **SOURCE_LABELS,
        "io.torchkiln.build-mode": mode,
        "io.torchkiln.extensions": extensions,
    }
    assert incontainer.expectations(labels, []) == [
        "--expect-torch", "2.14.1", "--expect-cca", "8.6;9.0",
    ]  # fmt: skip


def test_ngc_image_has_no_expectations():
    assert incontainer.expectations({"io.torchkiln.ngc-image": "x"}, []) == []


@pytest.mark.parametrize(
    ("args", "problem", "said"),
    [
        ([], "the engine lists no nvidia runtime or CDI device", "--service train --allow-cpu"),
        (["--json"], "COMPOSE_FILE has compose/cpu.yaml", "--service full --allow-cpu --json"),
        (["--allow-cpu"], "the engine lists no nvidia runtime or CDI device", ""),
        ([], "", ""),
    ],
    ids=["no-runtime", "cpu-override-json", "asked-already", "gpu-here"],
)
def test_a_failed_smoke_without_a_gpu_names_the_command_that_works_here(args, problem, said):
    service = "full" if "--json" in args else "train"
    route = incontainer.cpu_route(service, args, problem)
    if not said:
        assert route == ""
        return
    assert said in route and problem in route
    assert route.endswith("nox -s smoke -- " + said.replace("--service", "--service", 1))
