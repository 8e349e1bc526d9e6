"""What the estimate reads of each extension before its build: the CUDA sources nvcc will be
called for (its .cu files, counted as the build counts them: `inimage.nvcc.count_cuda_sources`)
and the archs its own build files name (for EXTENSION_ARCHS=as-is), from local folders, the
wheelhouse, or the source distributions on the index (the download the C++ check reads too).
A source that cannot be read is left unread: the estimate then says a range.
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchkiln import cxxcheck
from torchkiln.extcompile import ExtensionSources
from torchkiln.inimage import nvcc

# -gencode arch=compute_90,code=sm_90, sm_90a, compute_120f …: each number one arch compiled.
_ARCH = re.compile(r"\b(?:sm|compute)_(\d{2,3})[af]?\b")


def own_archs(texts: Sequence[str]) -> int:
    """The archs a build's own files name (0 when none)."""
    return len({number for text in texts for number in _ARCH.findall(text)})


def cuda_sources_of_archive(name: str, data: bytes) -> int:
    """The .cu files of a source distribution (.tar.gz or .zip)."""
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sum(1 for member in archive.namelist() if member.endswith(".cu"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        return sum(
            1 for member in archive.getmembers() if member.isfile() and member.name.endswith(".cu")
        )


def of_archive(project: str, name: str, data: bytes) -> ExtensionSources:
    """What a source distribution says of its build."""
    texts = cxxcheck.build_texts_of_archive(name, data)
    return ExtensionSources(project, cuda_sources_of_archive(name, data), own_archs(texts))


def of_folder(project: str, folder: Path) -> ExtensionSources:
    """What a local extension folder says of its build."""
    texts = cxxcheck.build_texts_of_folder(folder)
    return ExtensionSources(project, nvcc.count_cuda_sources(str(folder)), own_archs(texts))


def in_wheelhouse(wheelhouse: Path, spec: str) -> Path | None:
    """The source distribution of a name==version spec in a wheelhouse, None when absent."""
    project, version = spec.split("==", 1)
    pattern = cxxcheck.sdist_name(project, version)
    found = [path for path in wheelhouse.iterdir() if pattern.match(path.name)]
    return found[0] if found else None


def gather(
    specs: Sequence[str], folders: Mapping[str, str], index: str, cafile: str, wheelhouse: str = ""
) -> list[ExtensionSources]:
    """What each extension's sources say, where they can be read before the build: the local
    folders, the specs' source distributions in the wheelhouse or on the Python index."""
    from torchkiln import extensions

    found = [of_folder(extensions.folder_project(path), Path(path)) for path in folders.values()]
    for spec in specs:
        project, version = spec.split("==", 1)
        try:
            if wheelhouse:
                path = in_wheelhouse(Path(wheelhouse), spec)
                if path is None or path.stat().st_size > cxxcheck.SDIST_LIMIT_BYTES:
                    continue
                found.append(of_archive(project, path.name, path.read_bytes()))
                continue
            link = cxxcheck.sdist_files(index, project, cafile).get(version)
            if link:
                found.append(of_archive(project, link, cxxcheck.sdist_data(link, cafile)))
        except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile):
            continue
    return found
