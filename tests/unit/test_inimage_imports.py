"""The in-image code imports only the standard library, torch (torchvision/torchaudio lazily)
and its own subpackage, and the Dockerfiles copy exactly that code."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "torchkiln"
INIMAGE = sorted((PACKAGE / "inimage").glob("*.py"))
# The entry modules `python -m torchkiln.smoke` / `torchkiln.bench` (the contract names).
ENTRY = [PACKAGE / "__init__.py", PACKAGE / "smoke.py", PACKAGE / "bench.py"]
ALLOWED_THIRD_PARTY = {"torch", "torchvision", "torchaudio"}


def imported(path: Path) -> list[tuple[str, int]]:
    """Every module an import names, anywhere in the file (`from torchkiln import x` names
    torchkiln.x), with its line."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno}: write absolute imports"
            module = node.module or ""
            if module in ("torchkiln", "torchkiln.inimage"):
                names += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
            else:
                names.append((module, node.lineno))
    return names


def allowed(module: str) -> bool:
    """Tell whether in-image code may import a module."""
    if module.split(".")[0] == "torchkiln":
        return module.startswith("torchkiln.inimage.")
    return module.split(".")[0] in sys.stdlib_module_names | ALLOWED_THIRD_PARTY


@pytest.mark.parametrize("path", INIMAGE + ENTRY, ids=lambda path: path.name)
def test_in_image_modules_import_only_stdlib_torch_and_inimage(path: Path) -> None:
    found = imported(path)
    bad = [f"{path.name}:{line} imports {name}" for name, line in found if not allowed(name)]
    assert not bad, bad


def test_the_rule_catches_host_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport docker\nfrom torchkiln import settings\n"
        "from torchkiln.inimage import archs\n"
        "def late():\n    import dotenv\n"
    )
    refused = [name for name, _ in imported(sample) if not allowed(name)]
    assert refused == ["docker", "torchkiln.settings", "dotenv"]


def test_entry_modules_only_reach_inimage() -> None:
    for path in ENTRY[1:]:
        text = path.read_text()
        assert re.search(r"^from torchkiln\.inimage\.\w+ import main$", text, re.M), path.name


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/ngc.Dockerfile"])
def test_dockerfiles_copy_just_the_in_image_code(dockerfile: str) -> None:
    text = (SRC.parent / dockerfile).read_text()
    copies = re.findall(r"^COPY .*(?:\\\n.*)*", text, re.M)
    sources = {word for line in copies for word in line.split() if word.startswith("src/")}
    # The entry modules and torchkiln.inimage (the build steps take some of its modules only).
    entries = {"src/torchkiln/__init__.py", "src/torchkiln/bench.py", "src/torchkiln/smoke.py"}
    outside = sorted(
        source
        for source in sources
        if source not in entries and not source.startswith("src/torchkiln/inimage/")
    )
    assert outside == [], f"{dockerfile} copies host code into an image: {outside}"
    for source in sources - entries - {"src/torchkiln/inimage/"}:
        assert (SRC.parent / source).is_file(), f"{dockerfile} copies {source}, which is missing"
    allowed_in_context = [
        line for line in (SRC.parent / ".dockerignore").read_text().split() if "src/" in line
    ]
    assert sorted(allowed_in_context) == [
        "!src/torchkiln/__init__.py",
        "!src/torchkiln/bench.py",
        "!src/torchkiln/inimage/*.py",
        "!src/torchkiln/inimage/buildhook/sitecustomize.py",  # the build hook (modules.py)
        "!src/torchkiln/smoke.py",
    ]
