"""A source-built torch that imports and travels, on the real engine (issue: the runtime closure).

The PyTorch stand-in links OpenBLAS and libgomp as PyTorch does, and `import torch` loads its
libraries: the train image must carry their runtime packages (derived from the built wheels), its
link audit must pass, fail when a library goes, and the exported wheels must install and import
where no -dev package, no OpenBLAS and no libgomp is installed.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from projects import BASE, EXEC_TIMEOUT, assert_ok

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


def run_in(image: str, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run a bash script in a fresh container of an image."""
    command = ["docker", "run", "--rm", *options, image, "bash", "-c", script]
    return subprocess.run(command, capture_output=True, text=True, timeout=EXEC_TIMEOUT * 5)


def test_the_image_has_what_the_build_linked_and_its_link_audit_passes(source_project) -> None:
    project, _ = source_project
    image = project.image("train")
    script = (
        "dpkg-query -W -f '${Status}\\n' libopenblas0-pthread libgomp1; "
        "python -c 'import torch; print(torch.dot([1, 2, 3], [4, 5, 6]))'; "
        "python -m torchkiln.inimage.links"
    )
    output = assert_ok(run_in(image, script))
    assert output.count("install ok installed") == 2, output
    assert "32.0" in output
    assert "OK  (" in output


def test_a_missing_library_fails_the_audit_with_its_name_and_package(source_project) -> None:
    project, _ = source_project
    script = (
        "rm /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 && ldconfig && "
        "su -s /bin/bash -c 'python -m torchkiln.inimage.links --json; echo audit=$?; "
        'python -c "import torch"\' alice'
    )
    result = run_in(project.image("train"), script, "--user", "0")
    output = result.stdout + result.stderr
    assert "audit=1" in output, output
    report = json.loads(output[: output.index("audit=")])
    (torch,) = [row for row in report["packages"] if row["package"] == "torch"]
    assert torch["status"] == "fail"
    assert "libopenblas.so.0" in torch["detail"] and "libtorch_cpu.so" in torch["detail"]
    assert "libopenblas0" in torch["detail"]  # the package that provides it
    assert "libopenblas.so.0: cannot open shared object file" in output  # as import torch says


def test_exported_wheels_install_and_import_without_dev_packages(source_project, tmp_path) -> None:
    project, _ = source_project
    dest = tmp_path / "dist"
    fixtures = project.root / "tests" / "fixtures"
    sources = (
        "--source",
        f"pytorch={fixtures / 'pytorch'}",
        "--source",
        f"vision={fixtures / 'vision'}",
    )
    assert_ok(project.invoke("wheels", "--dest", str(dest), "--cca", "8.6 9.0", *sources))
    info = json.loads((dest / "BUILD-INFO.json").read_text())
    platforms = {entry["name"]: entry["platform"] for entry in info["wheels"]}
    assert platforms["torch"].startswith("manylinux_"), platforms  # repaired to travel
    # A plain Debian with only Python: no -dev package, no OpenBLAS, no libgomp.
    script = (
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv "
        ">/dev/null && python3 -m venv /venv && "
        "dpkg -l | awk '$2 ~ /-dev/' | wc -l && ldconfig -p | grep -cE 'libopenblas|libgomp'; "
        "/venv/bin/pip install --quiet --no-index /dist/torch-*.whl && "
        "/venv/bin/python -c 'import torch; print(\"dot\", torch.dot([1, 2, 3], [4, 5, 6]))'"
    )
    result = run_in(BASE, script, "--volume", f"{dest}:/dist:ro")
    output = assert_ok(result)
    counts = output.split("dot")[0].split()
    assert counts[-2:] == ["0", "0"], output  # nothing of the kind on that system
    assert "dot 32.0" in output
