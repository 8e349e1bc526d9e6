"""What the official torch wheel of a release requires, and what a build here has of it.

The official CUDA wheel names, in its Requires-Dist, every NVIDIA library it links (cuDNN, NCCL,
cuSPARSELt, NVSHMEM, the toolkit's libraries as cuda-toolkit extras) and cuda-bindings, each
pinned. That metadata is the one source of truth for three things:

- the pins of the NVIDIA wheels a source build compiles against, and
- the requirements the built torch declares (PYTORCH_EXTRA_INSTALL_REQUIREMENTS), so the runtime
  and any environment the exported wheel goes to get the very same libraries;
- the parity report: a feature the official wheel has (its library is required) that this build's
  CMake summary shows OFF is a loss, named with the package or setting that brings it back.

Input: the wheel itself, its METADATA, or `pip install --dry-run --report` JSON (which pip fills
from the index's metadata files, without the wheel). Standard library only.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Which CMake switch each required NVIDIA package stands for, and what brings it back.
FEATURES: tuple[tuple[str, str, str], ...] = (
    # (requirement name or cuda-toolkit extra, CMake key, the fix named when this build lacks it)
    ("nvidia-cudnn", "USE_CUDNN", "cuDNN (nvidia-cudnn-cu13) and USE_CUDNN=1"),
    ("nvidia-nccl", "USE_NCCL", "NCCL (nvidia-nccl-cu13) and USE_NCCL=1"),
    ("nvidia-cusparselt", "USE_CUSPARSELT", "cuSPARSELt (nvidia-cusparselt-cu13)"),
    ("nvidia-nvshmem", "USE_NVSHMEM", "NVSHMEM (nvidia-nvshmem-cu13) with NVSHMEM_HOME"),
    ("cuda-toolkit[cufile]", "USE_CUFILE", "cuFile (cuda-toolkit[cufile])"),
    ("cuda-toolkit[cupti]", "USE_KINETO", "CUPTI (cuda-toolkit[cupti]) for the profiler"),
)
# Every official Linux CUDA wheel is built with these (PyTorch's release build settings).
ALWAYS_ON = (
    ("USE_FLASH_ATTENTION", "USE_FLASH_ATTENTION=1"),
    ("USE_MEM_EFF_ATTENTION", "USE_MEM_EFF_ATTENTION=1"),
    ("USE_DISTRIBUTED", "USE_DISTRIBUTED=1"),
)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")
_SUMMARY = re.compile(r"--\s+(USE_[A-Z0-9_]+|BLAS|LAPACK)\s*:\s*(\S*)")


class MarkerError(ValueError):
    """A marker this evaluator does not understand."""


@dataclass(frozen=True)
class Requirement:
    """One Requires-Dist entry: the whole line, and its parts."""

    line: str
    name: str  # normalised: lower case, '-' for '_' and '.'
    extras: tuple[str, ...]
    spec: str  # the requirement without its marker
    marker: str


def normalise(name: str) -> str:
    """PEP 503's normal form of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(line: str) -> Requirement:
    """Split 'cuda-toolkit[cufft,nvrtc]==13.0.3; platform_system == "Linux"'."""
    spec, _, marker = line.partition(";")
    match = _NAME.match(spec)
    if not match:
        raise ValueError(f"not a requirement: {line!r}")
    extras = tuple(
        sorted(item.strip() for item in (match[2] or "").strip("[]").split(",") if item.strip())
    )
    return Requirement(line.strip(), normalise(match[1]), extras, spec.strip(), marker.strip())


def marker_environment(python: tuple[int, int] | None = None) -> dict[str, str]:
    """The values markers are evaluated against: this interpreter's, or another Python's."""
    major, minor = python or sys.version_info[:2]
    return {
        "platform_system": platform.system(),
        "sys_platform": sys.platform,
        "platform_machine": platform.machine(),
        "python_version": f"{major}.{minor}",
        "os_name": "posix",
        "implementation_name": "cpython",
        "extra": "",
    }


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _compare(left: str, operator: str, right: str, versions: bool) -> bool:
    a, b = (_version_key(left), _version_key(right)) if versions else (left, right)
    return {
        "==": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[operator]


_ATOM = re.compile(
    r"\s*(?P<left>[A-Za-z_]+|'[^']*'|\"[^\"]*\")\s*(?P<op>==|!=|<=|>=|<|>)\s*"
    r"(?P<right>[A-Za-z_]+|'[^']*'|\"[^\"]*\")\s*$"
)


def evaluate_marker(marker: str, env: Mapping[str, str]) -> bool:
    """Evaluate a PEP 508 marker of the forms wheels' metadata uses here: comparisons of the
    environment's names joined by `and`/`or`, with parentheses."""
    text = marker.strip()
    if not text:
        return True
    depth, splits = 0, {"or": [], "and": []}
    for index, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if depth == 0:
            for word in ("or", "and"):
                if text.startswith(f" {word} ", index):
                    splits[word].append(index)
    for word in ("or", "and"):  # `or` binds loosest
        if splits[word]:
            parts, start = [], 0
            for index in splits[word]:
                parts.append(text[start:index])
                start = index + len(word) + 2
            parts.append(text[start:])
            results = (evaluate_marker(part, env) for part in parts)
            return any(results) if word == "or" else all(results)
    if text.startswith("(") and text.endswith(")"):
        return evaluate_marker(text[1:-1], env)
    match = _ATOM.match(text)
    if not match:
        raise MarkerError(f"cannot evaluate marker {marker!r}")

    def value(token: str) -> tuple[str, bool]:
        if token[0] in "'\"":
            return token[1:-1], False
        if token not in env:
            raise MarkerError(f"unknown marker name {token!r}")
        return env[token], token.endswith("_version")

    (left, left_is_version), (right, right_is_version) = value(match["left"]), value(match["right"])
    return _compare(left, match["op"], right, left_is_version or right_is_version)


def read_requires(source: Path) -> tuple[str, list[str]]:
    """The version and Requires-Dist lines of a wheel, a METADATA file or a pip report."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            text = archive.read(name).decode()
    else:
        text = source.read_text(encoding="utf-8")
    if source.suffix == ".json":
        report = json.loads(text)
        items = [item for item in report.get("install", []) if item["metadata"]["name"] == "torch"]
        if not items:
            raise ValueError(f"{source} names no torch to install")
        metadata = items[0]["metadata"]
        return metadata["version"], list(metadata.get("requires_dist") or [])
    version = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
    requires = re.findall(r"^Requires-Dist:\s*(.+?)\s*$", text, re.MULTILINE)
    return (version[1] if version else ""), requires


def applicable(lines: Iterable[str], env: Mapping[str, str]) -> list[Requirement]:
    """The requirements that apply in `env` (extras not asked for are left out)."""
    return [
        requirement
        for requirement in map(parse_requirement, lines)
        if evaluate_marker(requirement.marker, env)
    ]


def is_cuda(requirement: Requirement) -> bool:
    """NVIDIA's CUDA wheels and their Python bindings."""
    return requirement.name.startswith(("nvidia-", "cuda-"))


def features(requirements: Iterable[Requirement]) -> dict[str, str]:
    """The CMake switches the official wheel was built with ON, each with its fix."""
    found: dict[str, str] = {}
    for requirement in requirements:
        for wanted, key, fix in FEATURES:
            name, _, extra = wanted.partition("[")
            if requirement.name.startswith(name) and (
                not extra or extra.rstrip("]") in requirement.extras
            ):
                found[key] = fix
    if any(is_cuda(requirement) for requirement in requirements):
        found.update(ALWAYS_ON)
    return found


def official(source: Path, python: tuple[int, int] | None = None) -> dict[str, object]:
    """Everything the build takes from the official wheel's metadata, as one JSON object."""
    version, lines = read_requires(source)
    requirements = applicable(lines, marker_environment(python))
    cuda = [requirement for requirement in requirements if is_cuda(requirement)]
    return {
        "version": version,
        # Pins for the build's own NVIDIA wheels, markers evaluated away.
        "cuda": [requirement.spec for requirement in cuda],
        # What the built torch declares: the NVIDIA wheels and Triton, as the official one does.
        "declare": [
            requirement.line
            for requirement in map(parse_requirement, lines)
            if is_cuda(requirement) or requirement.name == "triton"
        ],
        "features": features(requirements),
    }


def summary_switches(log: str) -> dict[str, str]:
    """The switches of PyTorch's CMake configuration summary ('--   USE_CUDNN : ON')."""
    return {key: value for key, value in _SUMMARY.findall(log)}


def parity(log: str, expected: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Compare a build's CMake summary with the official wheel's features: (switch, this
    build's value, the fix) for each feature the official wheel has and this build lacks."""
    switches = summary_switches(log)
    if not switches:
        return []
    lost = []
    for key, fix in expected.items():
        value = switches.get(key, "")
        if value.upper() not in ("ON", "1", "TRUE"):
            lost.append((key, value or "absent", fix))
    return lost


def main(argv: list[str]) -> int:
    """`official SOURCE OUT.json` or `parity LOG OFFICIAL.json` (prints torchkiln-parity lines)."""
    if len(argv) == 3 and argv[0] == "official":
        data = official(Path(argv[1]))
        Path(argv[2]).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"torchkiln: official torch {data['version']} requires " + ", ".join(data["cuda"]))
        return 0
    if len(argv) == 3 and argv[0] == "parity":
        expected = json.loads(Path(argv[2]).read_text(encoding="utf-8"))["features"]
        log = Path(argv[1]).read_text(encoding="utf-8", errors="replace")
        if not summary_switches(log):
            print("torchkiln-parity: no CMake configuration summary in the build log")
            return 0
        lost = parity(log, expected)
        for key, value, fix in lost:
            print(f"torchkiln-parity: lost {key}={value}; the official wheel has it: install {fix}")
        if not lost:
            print(
                f"torchkiln-parity: ok, every feature of the official wheel: {' '.join(expected)}"
            )
        return 0
    print("usage: torchreqs official SOURCE OUT.json | parity LOG OFFICIAL.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
