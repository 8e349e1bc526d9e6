"""C++ standards, before the compile: the one an extension's build asks for (its setup.py's
`-std=c++NN`) against the one torch's headers require, with advice that names a change that
exists: a release of the extension that fits, else the newest torch on the index that fits.

The decisions are pure; `gather` reads setup.py from local folders and from the source
distributions on the index (one download each, no code of theirs runs).
"""

from __future__ import annotations

import functools
import io
import re
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from torchkiln import gpu, indexcheck, urls
from torchkiln.checkrows import Row
from torchkiln.errors import UserError

# The first torch release whose headers require C++20 (ATen/ATen.h: "#error C++20 or later
# compatible compiler is required"); the releases before it take C++17.
TORCH_CXX20_FROM = (2, 14)
# Where an extension's own compile flags are: its setup.py (and a setup.cfg or CMake list).
BUILD_FILES = ("setup.py", "setup.cfg", "CMakeLists.txt")
# -std=c++17 (gcc, clang, nvcc), -std:c++17 and /std:c++17 (MSVC).
_STANDARD = re.compile(r"[-/]std[=:]\s*c\+\+(\d\d)\b")
# A flag on a line that chooses: Python's `a if cond else b`.
_CONDITION = re.compile(r"\bif\b.+\belse\b")
# What a block's condition names when it can choose another standard for another torch or OS.
_DECIDES = re.compile(r"(?i)torch|version|platform|win32|\bnt\b|msvc|darwin")
# A source distribution larger than this is not read before the build (the build will say).
SDIST_LIMIT_BYTES = 64 * 1024**2


def torch_standard(version: str) -> int:
    """The C++ standard torch's headers require."""
    return 20 if gpu.version_tuple(version)[:2] >= TORCH_CXX20_FROM else 17


def asked_standard(texts: Iterable[str]) -> int | None:
    """The C++ standard a build's files name (the oldest one), None when none is."""
    return min(_named(texts), default=None)


def pinned_standard(texts: Sequence[str]) -> tuple[int | None, bool]:
    """The oldest C++ standard a build's files name, and whether the build surely compiles with
    it: the only one named, on a line no condition chooses (`c++17 if torch < 2.14 else c++20`,
    an if/else block, CMake's if()). Not sure: the check warns instead of refusing."""
    named = set(_named(texts))
    if not named:
        return None, False
    chosen = any(
        _chosen(lines, at)
        for text in texts
        for lines in [text.splitlines()]
        for at, line in enumerate(lines)
        if _STANDARD.search(line)
    )
    return min(named), len(named) == 1 and not chosen


def _named(texts: Iterable[str]) -> list[int]:
    found = [int(match) for text in texts for match in _STANDARD.findall(text)]
    # c++98 is older than c++03 and c++11: count the years of the century before as negative.
    return [year - 100 if year >= 90 else year for year in found]


def _chosen(lines: Sequence[str], at: int) -> bool:
    """Tell whether line `at` sits in a condition that can choose another standard: its own
    if/else, or a block whose condition names torch, a version or a platform. A block that only
    switches on something else (`if HIP_BUILD:` … `else:`, `if not SKIP_CUDA_BUILD:`) pins the
    standard all the same, as mamba-ssm's setup.py does."""
    if _CONDITION.search(lines[at]):
        return True
    indent = _indent(lines[at])
    for index in range(at - 1, -1, -1):
        stripped = lines[index].strip()
        if not stripped or stripped.startswith("#"):
            continue
        cmake = re.match(r"(?i)(if|elseif|else|endif)\s*\(", stripped)
        if cmake and stripped[-1] != ":":  # CMake's blocks: the nearest one decides
            word = cmake.group(1).lower()
            if word == "endif":
                return False
            if word != "else":
                return bool(_DECIDES.search(stripped))
            continue  # an else(): its if() above says what it switches on
        depth = _indent(lines[index])
        if depth < indent:
            indent = depth
            head = re.match(r"(if|elif|else|match|case)\b", stripped)
            if head and "__main__" not in stripped and _chain_decides(lines, index, depth):
                return True
        if indent == 0:
            return False
    return False


def _chain_decides(lines: Sequence[str], index: int, depth: int) -> bool:
    """Whether an if/elif/else chain (from its header at `index` up to its `if`) switches on
    torch, a version or a platform."""
    for line in reversed(lines[: index + 1]):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or _indent(line) > depth:
            continue
        if _indent(line) < depth or not re.match(r"(if|elif|else|match|case)\b", stripped):
            return False
        if _DECIDES.search(stripped):
            return True
        if re.match(r"(if|match)\b", stripped):
            return False
    return False


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def build_texts_of_archive(name: str, data: bytes) -> list[str]:
    """The build files at the top of a source distribution (.tar.gz or .zip), as text."""
    texts: list[str] = []
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                if member.count("/") == 1 and member.rsplit("/", 1)[1] in BUILD_FILES:
                    texts.append(archive.read(member).decode("utf-8", "replace"))
        return texts
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for member in archive.getmembers():
            parts = member.name.strip("./").split("/")
            if member.isfile() and len(parts) == 2 and parts[1] in BUILD_FILES:
                handle = archive.extractfile(member)
                if handle is not None:
                    texts.append(handle.read().decode("utf-8", "replace"))
    return texts


def build_texts_of_folder(folder: Path) -> list[str]:
    """The build files of a local extension's folder, as text."""
    return [
        (folder / name).read_text(encoding="utf-8", errors="replace")
        for name in BUILD_FILES
        if (folder / name).is_file()
    ]


def newest_torch_for(standard: int, versions: Iterable[str]) -> str:
    """The newest torch release among `versions` whose headers take `standard` and that has a
    torchvision torchkiln knows ('' when none)."""
    fitting = []
    for version in versions:
        plain = version.split("+", 1)[0]
        try:
            if torch_standard(plain) <= standard and re.fullmatch(r"\d+\.\d+\.\d+", plain):
                gpu.matching_torchvision(plain)
                fitting.append(plain)
        except (UserError, ValueError):
            continue
    return max(fitting, key=gpu.version_tuple, default="")


def problem(
    what: str,
    standard: int,
    torch: str,
    fitting_release: str = "",
    fitting_torch: str = "",
    index: str = "",
    sure: bool = True,
) -> tuple[str, str]:
    """Refuse an extension whose build pins an older C++ standard than torch's headers
    require, with the change that exists (checked on `index` by the caller); `sure` False:
    the build names it under a condition or beside another, so the words are a warning's."""
    needed = torch_standard(torch)
    if sure:
        line = (
            f"--extension {what}: its setup.py compiles with -std=c++{standard}, and torch "
            f"{torch}'s headers require C++{needed}: the compile would fail (#error C++{needed} "
            "or later)"
        )
    else:
        line = (
            f"--extension {what}: its setup.py names -std=c++{standard} under a condition or "
            f"beside another standard, and torch {torch}'s headers require C++{needed}: the "
            f"compile fails if the build picks c++{standard}"
        )
    routes = []
    if fitting_release:
        routes.append(f"use --extension {fitting_release}, a release that builds with C++{needed}")
    if fitting_torch:
        where = f" on {urls.shown(index)}" if index else ""
        routes.append(
            f"build with --torch {fitting_torch}, the newest torch{where} whose headers take "
            f"C++{standard}"
        )
    if not routes:
        routes.append(
            f"choose a torch older than {'.'.join(map(str, TORCH_CXX20_FROM))} with --torch, or "
            f"a release of the extension made for C++{needed}"
        )
    return line, "; or ".join(routes)


def sdist_data(link: str, cafile: str) -> bytes:
    """A source distribution's bytes (at most SDIST_LIMIT_BYTES), downloaded once a run: the
    estimate reads the same ones (extsources)."""
    return _sdist_data(link, cafile)


@functools.lru_cache(maxsize=8)
def _sdist_data(link: str, cafile: str) -> bytes:
    return indexcheck.fetch(link, cafile, limit=SDIST_LIMIT_BYTES)[1]


def sdist_name(project: str, version: str = "") -> re.Pattern[str]:
    """The file name of a project's source distribution (any spelling of its name: - _ .), of
    one version, or of any (the version its first group)."""
    stem = re.sub(r"[-_.]+", "[-_.]", re.escape(project.lower()).replace("\\", ""))
    wanted = re.escape(version) if version else "(.+?)"
    return re.compile(rf"^{stem}-{wanted}\.(tar\.gz|zip)$", re.IGNORECASE)


def sdist_files(index_url: str, project: str, cafile: str) -> dict[str, str]:
    """The source distributions of a project on an index: version -> download URL (the index
    asked once a run)."""
    return dict(_sdist_files(index_url, project, cafile))


@functools.lru_cache(maxsize=32)
def _sdist_files(index_url: str, project: str, cafile: str) -> dict[str, str]:
    import urllib.parse

    kind, body = indexcheck.fetch(f"{index_url.rstrip('/')}/{project}/", cafile)
    links: list[str] = []
    if "json" in kind:
        links = [str(item.get("url", "")) for item in indexcheck.simple_files(body)]
    else:
        page = body.decode("utf-8", "replace")
        base = f"{index_url.rstrip('/')}/{project}/"
        links = [urllib.parse.urljoin(base, link) for link in re.findall(r'href="([^"]+)"', page)]
    found: dict[str, str] = {}
    pattern = sdist_name(project)
    for link in links:
        name = urllib.parse.unquote(link.split("#", 1)[0].rsplit("/", 1)[-1])
        match = pattern.match(name)
        if match:
            found[match[1]] = link.split("#", 1)[0]
    return found


def gather(
    specs: Sequence[str],
    folders: Mapping[str, str],
    values: Mapping[str, str],
    cafile: str,
    default_index: str,
) -> list[Row]:
    """Read the C++ standard each extension pins and refuse those torch's headers do not take;
    warn where the build names it under a condition or beside another (it may choose the one
    that fits). A lookup that cannot be made refuses nothing: the build will say."""
    torch = values["PYTORCH_VERSION"]
    needed = torch_standard(torch)
    python_index = values.get("PIP_INDEX_URL") or default_index
    # Asked as the build's pip asks: the Python index with PIP_INDEX_TOKEN as its password.
    asked = indexcheck.with_token(python_index, values)
    rows: list[Row] = []
    late: list[tuple[str, int, bool, dict[str, str]]] = []
    for folder in folders.values():
        standard, sure = pinned_standard(build_texts_of_folder(Path(folder)))
        if standard is not None and standard < needed:
            late.append((folder, standard, sure, {}))
    for spec in specs:
        project, version = spec.split("==", 1)
        try:
            files = sdist_files(asked, project, cafile)
            link = files.get(version)
            if not link:
                continue
            standard, sure = pinned_standard(build_texts_of_archive(link, sdist_data(link, cafile)))
        except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile):
            continue
        if standard is not None and standard < needed:
            late.append((spec, standard, sure, files))
    if not late:
        return rows
    # The torch releases there are: the torch index's, else (it does not answer) the Python
    # index's, which carries the same releases.
    where = indexcheck.torch_index(values, default_index).url
    python = values["PYTHON_VERSION"]
    answer = indexcheck.probe(indexcheck.with_token(where, values), cafile, python, ["torch"])
    if not answer.versions.get("torch") and where != python_index:
        where = python_index
        answer = indexcheck.probe(asked, cafile, python, ["torch"])
    for what, standard, sure, files in late:
        release = ""
        if files:  # the newest release of the project, if it takes torch's standard
            project = what.split("==", 1)[0]
            newest = max(files, key=_release_key)
            if newest != what.split("==", 1)[1]:
                try:
                    _, data = indexcheck.fetch(files[newest], cafile, limit=SDIST_LIMIT_BYTES)
                    own = asked_standard(build_texts_of_archive(files[newest], data))
                    release = f"{project}=={newest}" if own is None or own >= needed else ""
                except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile):
                    release = ""
        fitting = newest_torch_for(standard, answer.versions.get("torch", {}))
        detail, fix = problem(what, standard, torch, release, fitting, where, sure)
        rows.append(Row("extensions", "error" if sure else "warn", detail, fix))
    return rows


def _release_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:4])
