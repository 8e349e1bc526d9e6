"""The link audit: does every ELF file in site-packages find the libraries it needs?

Every DT_NEEDED entry of every shared object (and executable) under the given paths, or under
site-packages, is resolved the way glibc's dynamic linker resolves it (elf/dl-load.c): a name
with a slash is a path; else the object's DT_RPATH when it has no DT_RUNPATH, LD_LIBRARY_PATH,
its DT_RUNPATH, /etc/ld.so.cache and the system directories (these two not under
DF_1_NODEFLIB), with $ORIGIN, $LIB and $PLATFORM expanded. A candidate must be an ELF of the
object's class and machine: a 32-bit library of the same name is passed over, as ld.so does.

What a process has already loaded counts too, as ld.so matches a loaded object's SONAME before
it searches: an object that links a library of torch's lib folder (as every
torch.utils.cpp_extension build links libc10.so and libtorch*.so without an rpath) is only ever
loaded after `import torch`, so what that import loads resolves its names: torch/_C and
libtorch_global_deps.so with everything they need, and the NVIDIA libraries torch/__init__.py's
_preload_cuda_deps loads (read from the installed torch, never from a list kept here). The same
holds for a library that links a Python extension module (triton's plugins link libtriton.so).

Not failures: the NVIDIA driver's libraries (libcuda.so.1, libnvidia-ml.so.1, ...), which the
container runtime mounts at run time, and the system libraries that optional plugins of NVIDIA's
wheels need (nvshmem's UCX/MPI transports, cuFile's RDMA): nothing links those plugins, they are
loaded only when that transport is asked for. Both are named in the detail.

Libraries opened at run time (dlopen) are named by no DT_NEEDED entry: when the files hold NCCL,
those of torchkiln.inimage.runtimelibs' table (the verbs library NCCL needs for InfiniBand/RoCE)
must be here too, else a warning row names what is lost and the package.

`python -m torchkiln.inimage.links [--json] [PATH ...]` prints the audit (exit 0 all resolve,
1 something is missing, 2 bad input); `--needs-from-system PATH ...` prints, for the build, the
NEEDED names of the ELF files under the PATHs that those trees do not satisfy themselves, one
`soname<TAB>resolved path` line each ('' when it does not resolve here). Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import mmap
import os
import re
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchkiln.inimage import audit as arch_audit
from torchkiln.inimage import runtimelibs
from torchkiln.inimage.report import FAIL, PASS, WARN
from torchkiln.inimage.workers import ModuleInBackground

HEADER = struct.Struct("<16sHHIQQQIHHHHHH")  # ELF64: ident, type, machine ... shstrndx
PROGRAM = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
SECTION = struct.Struct("<IIQQQQIIQQ")  # name, type, flags, addr, offset, size, link ...
DYNAMIC = struct.Struct("<qQ")  # tag, value
STRING_CHUNK = 256  # bytes read at first for one dynamic string (names and paths are short)
PT_LOAD, PT_DYNAMIC = 1, 2
SHT_DYNAMIC = 6
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH = 0, 1, 5, 10, 14, 15
DT_RUNPATH, DT_FLAGS_1 = 29, 0x6FFFFFFB
DF_1_NODEFLIB = 0x800

MACHINES = {"x86_64": 62, "aarch64": 183, "ppc64le": 21}  # e_machine, when python's is unread
LD_SO_CACHE = "/etc/ld.so.cache"
WORKER = "--smoke-worker"  # smoke's background run: the audit's JSON, exit 0 even when it fails
AUDIT_TIMEOUT_S = 60
CACHE_OLD = b"ld.so-1.7.0"
CACHE_NEW = b"glibc-ld.so.cache1.1"
CACHE_OLD_HEADER = struct.Struct("<11sxI")  # magic, nlibs
CACHE_OLD_ENTRY = struct.Struct("<iII")  # flags, key, value
CACHE_NEW_HEADER = struct.Struct("<20sIIB3xI12x")  # magic+version, nlibs, strings, flags, ext
CACHE_NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap

DST = re.compile(r"\$(?:(ORIGIN|LIB|PLATFORM)\b|\{(ORIGIN|LIB|PLATFORM)\})")
# Mounted from the host's driver by the NVIDIA container runtime, never shipped in an image.
DRIVER = re.compile(
    r"(libcuda|libcudadebugger|libnvcuvid|libnvoptix|libnvidia-[\w.+-]+?"
    r"|lib(?:GLX|EGL|GLESv1_CM|GLESv2)_nvidia)\.so(\.\d+)*"
)
# Python extension modules: how importlib names them (plain .so needs PyInit_ to tell).
EXTENSION = re.compile(r"\.(cpython-[\w-]+|abi3)\.so$")
# torch/__init__.py's _preload_cuda_deps list: ("cublas", "libcublas.so.*[0-9]"), ...
PRELOADED = re.compile(r'\(\s*"(\w+)"\s*,\s*"(lib[\w.*\[\]-]+)"')

# How a missing library is installed: Debian/Ubuntu packages, and the pip requirement torch's
# own metadata names for NVIDIA's libraries. {cuda} is torch's CUDA major version.
PACKAGE_HINTS: tuple[tuple[str, str], ...] = (
    (r"libopenblas(p)?\.so\.0", "apt-get install libopenblas0"),
    (r"libgomp\.so\.1", "apt-get install libgomp1"),
    (r"libgfortran\.so\.5", "apt-get install libgfortran5"),
    (r"liblapack\.so\.3", "apt-get install liblapack3"),
    (r"libblas\.so\.3", "apt-get install libblas3"),
    (r"libjpeg\.so\.8", "apt-get install libjpeg-turbo8 (Ubuntu; Debian's is libjpeg.so.62)"),
    (r"libjpeg\.so\.62", "apt-get install libjpeg62-turbo (Debian)"),
    (r"libpng16\.so\.16", "apt-get install libpng16-16 (libpng16-16t64 on Ubuntu 24.04)"),
    (r"libwebp\.so\.7", "apt-get install libwebp7"),
    (r"libwebpdemux\.so\.2", "apt-get install libwebpdemux2"),
    (r"libwebpmux\.so\.3", "apt-get install libwebpmux3"),
    (r"libsharpyuv\.so\.0", "apt-get install libsharpyuv0"),
    (r"libz\.so\.1", "apt-get install zlib1g"),
    (r"libnuma\.so\.1", "apt-get install libnuma1"),
    (r"libomp\.so\.5", "apt-get install libomp5"),
    (r"libstdc\+\+\.so\.6", "apt-get install libstdc++6"),
    (r"libgcc_s\.so\.1", "apt-get install libgcc-s1"),
    (r"libpython(3\.\d+)\.so\.1\.0", "apt-get install libpython\\1"),
    (r"lib(c10|torch|shm|caffe2_nvrtc)(_\w+)?\.so", "pip install torch; import torch loads it"),
    (r"libcudnn(_\w+)?\.so\.\d+", "pip install nvidia-cudnn-cu{cuda}"),
    (r"libcusparseLt\.so\.\d+", "pip install nvidia-cusparselt-cu{cuda}"),
    (r"libnccl\.so\.\d+", "pip install nvidia-nccl-cu{cuda}"),
    (r"libnvshmem_host\.so\.\d+", "pip install nvidia-nvshmem-cu{cuda}"),
    (r"libcublas(Lt)?\.so\.\d+", "pip install 'cuda-toolkit[cublas]'"),
    (r"libcudart\.so\.\d+", "pip install 'cuda-toolkit[cudart]'"),
    (r"libcufftw?\.so\.\d+", "pip install 'cuda-toolkit[cufft]'"),
    (r"libcufile(_rdma)?\.so\.\d+", "pip install 'cuda-toolkit[cufile]'"),
    (r"libcupti\.so\.\d+", "pip install 'cuda-toolkit[cupti]'"),
    (r"libcurand\.so\.\d+", "pip install 'cuda-toolkit[curand]'"),
    (r"libcusolver(Mg)?\.so\.\d+", "pip install 'cuda-toolkit[cusolver]'"),
    (r"libcusparse\.so\.\d+", "pip install 'cuda-toolkit[cusparse]'"),
    (r"libnvJitLink\.so\.\d+", "pip install 'cuda-toolkit[nvjitlink]'"),
    (r"libnvrtc(-builtins)?\.so[\d.]*", "pip install 'cuda-toolkit[nvrtc]'"),
    (r"libnvToolsExt\.so\.\d+|libnvtx3interop\.so\.\d+", "pip install 'cuda-toolkit[nvtx]'"),
)

# What a NEEDED name came to; every kind but MISSING lets the object load.
SEARCHED = ("path", "rpath", "LD_LIBRARY_PATH", "runpath", "ld.so.cache", "system dir")
LOADED, DRIVER_KIND, OPTIONAL, MISSING = "loaded", "driver", "optional", "missing"
RUNTIME_ROW = "(opened at run time)"  # the row of runtimelibs' warning
UNIMPORTABLE = "unimportable"  # missing for a module its package may import only if it can
# Packages whose every module must load: torch and what torch.compile and the images need.
STRICT_PACKAGES = ("torch", "torchvision", "torchaudio", "triton")


class LinkInputError(ValueError):
    """A path the link audit cannot use; the message is the one line shown."""


class ElfError(ValueError):
    """An ELF file whose dynamic section cannot be read (cut short, inconsistent)."""


class NotELF(ElfError):
    """A file that is no ELF at all (a linker script named .so, a text file)."""


class OtherELF(ElfError):
    """An ELF of another class or byte order than this machine's (a 32-bit library)."""


@dataclass
class Dynamic:
    """What the dynamic linker reads of one ELF file's dynamic section."""

    soname: str = ""
    needed: list[str] = field(default_factory=list)
    rpath: list[str] = field(default_factory=list)  # DT_RPATH entries, as written
    runpath: list[str] = field(default_factory=list)  # DT_RUNPATH entries, as written
    nodeflib: bool = False  # DF_1_NODEFLIB: no ld.so.cache, no system directories
    strings: tuple[int, int] = (0, 0)  # file offset and size of the dynamic string table


@dataclass(frozen=True)
class Resolved:
    """What one NEEDED name of one file came to."""

    how: str  # one of SEARCHED, or LOADED, DRIVER_KIND, OPTIONAL, MISSING
    path: str = ""  # the library it resolves to ('' when none)
    by: str = ""  # for LOADED: what loads it first, e.g. 'import torch'


@dataclass
class ElfFile:
    """One audited file and what each of its NEEDED names resolves to."""

    path: str
    relative: str
    package: str
    root: str
    dynamic: Dynamic
    needs: dict[str, Resolved] = field(default_factory=dict)
    error: str = ""

    @property
    def vendor(self) -> bool:
        """Tell whether the file comes from one of NVIDIA's wheels."""
        return self.package.startswith(arch_audit.VENDOR)


@dataclass
class PackageRow:
    """The audit's verdict on one package."""

    package: str
    status: str
    detail: str
    vendor: bool
    files: int
    needed: list[str]
    missing: list[dict[str, Any]] = field(default_factory=list)  # library, needed_by, hint
    driver: list[str] = field(default_factory=list)
    optional: list[dict[str, Any]] = field(default_factory=list)  # file, libraries
    unimportable: list[dict[str, Any]] = field(default_factory=list)  # as missing
    loaded: dict[str, str] = field(default_factory=dict)  # library -> what loads it


@dataclass
class LinkAudit:
    """The whole audit: the files, their packages' rows, and the search facts it used."""

    files: list[ElfFile]
    rows: list[PackageRow]
    ld_library_path: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Tell whether every NEEDED name of every file resolves."""
        return all(row.status != FAIL for row in self.rows)

    @property
    def warned(self) -> bool:
        """Tell whether some module cannot be imported (its package may not need it), or a
        library opened at run time is missing (runtimelibs)."""
        return any(row.unimportable or row.status == WARN for row in self.rows)

    @property
    def needed(self) -> list[str]:
        """Every NEEDED name of the audited files, once each."""
        return sorted({name for file in self.files for name in file.dynamic.needed})


# --- reading ELF files ----------------------------------------------------------------------


def identity(head: bytes) -> tuple[int, int, int] | None:
    """(class, byte order, machine) from an ELF file's first 20 bytes; None for no ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "<" if head[5] == 1 else ">"
    return head[4], head[5], struct.unpack_from(order + "H", head, 18)[0]


def identity_of(path: str) -> tuple[int, int, int] | None:
    """The ELF identity of a file (None when it is unreadable or no ELF)."""
    try:
        with open(path, "rb") as handle:
            return identity(handle.read(20))
    except OSError:
        return None


Reader = Callable[[int, int], bytes]  # (offset, count) -> at most count bytes from offset


def read_dynamic(path: str | os.PathLike[str]) -> Dynamic:
    """Read the dynamic section of a 64-bit little-endian ELF file (empty for a static one);
    raises NotELF, OtherELF, or ElfError for a file cut short.

    The file is read by pread, a few small ranges, not through an mmap: mapping a library of a
    gigabyte and faulting its pages in made a cold audit of a whole site-packages three times
    slower (docs/gpu-results.md, run 9)."""
    with open(path, "rb", buffering=0) as handle:
        fd = handle.fileno()
        head = os.pread(fd, HEADER.size, 0)
        if head[:4] != b"\x7fELF":
            raise NotELF(f"{path}: not an ELF file (it does not start with \\x7fELF)")
        if len(head) >= 6 and (head[4] != 2 or head[5] != 1):
            kind = "32-bit" if head[4] == 1 else "big-endian"
            raise OtherELF(f"{path}: a {kind} ELF; only 64-bit little-endian ones are audited")
        if len(head) < HEADER.size:
            raise ElfError(f"{path}: truncated ELF header ({len(head)} bytes)")
        return dynamic_in(
            lambda offset, count: os.pread(fd, count, offset), os.fstat(fd).st_size, str(path)
        )


def dynamic_in(read: Reader, size: int, path: str) -> Dynamic:
    """Find the dynamic array through the program headers (PT_DYNAMIC, the string table's
    address mapped to a file offset through PT_LOAD), else through the section headers."""
    fields = HEADER.unpack_from(read(0, HEADER.size), 0)
    phoff, shoff, phentsize, phnum = fields[5], fields[6], fields[9], fields[10]
    loads: list[tuple[int, int, int]] = []
    table: tuple[int, int] | None = None
    if phoff and phnum:
        if phentsize < PROGRAM.size or phoff + phentsize * phnum > size:
            raise ElfError(f"{path}: truncated: program headers end past byte {size}")
        headers = read(phoff, phentsize * phnum)
        for index in range(phnum):
            kind, _, offset, vaddr, _, filesz, _, _ = PROGRAM.unpack_from(
                headers, index * phentsize
            )
            if kind == PT_LOAD:
                loads.append((vaddr, filesz, offset))
            elif kind == PT_DYNAMIC:
                table = (offset, filesz)
    # Section headers sit at the file's end, a read of their own: read them only when the
    # program headers do not do.
    sections = dynamic_section(read, size, fields, path) if shoff and table is None else None
    if table is None:
        if sections is None:
            return Dynamic()  # statically linked: it needs nothing
        table = sections[0]
    offset, length = table
    if offset + length > size:
        raise ElfError(f"{path}: truncated: the dynamic section ends past byte {size}")
    tags: dict[int, int] = {}
    needed: list[int] = []
    array = read(offset, length)
    for at in range(0, length - DYNAMIC.size + 1, DYNAMIC.size):
        tag, value = DYNAMIC.unpack_from(array, at)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag in (DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH, DT_FLAGS_1):
            tags[tag] = value
    try:
        strings = string_table(tags, loads, sections, path)
    except ElfError:
        if not shoff or sections is not None:
            raise
        strings = string_table(tags, loads, dynamic_section(read, size, fields, path), path)
    start, count = strings
    if start + count > size:
        raise ElfError(f"{path}: truncated: the dynamic string table ends past byte {size}")

    def text(at: int) -> str:
        # Read a little past `at` and more until the terminating NUL: the table may be MBs.
        chunk, got = STRING_CHUNK, b""
        while at < count:
            got = read(start + at, min(chunk, count - at))
            end = got.find(b"\0")
            if end >= 0:
                return got[:end].decode("utf-8", "surrogateescape")
            if chunk >= count - at:
                break
            chunk *= 4
        raise ElfError(f"{path}: a dynamic string at {at} runs past its table")

    def entries(tag: int) -> list[str]:
        return text(tags[tag]).split(":") if tag in tags else []

    return Dynamic(
        soname=text(tags[DT_SONAME]) if DT_SONAME in tags else "",
        needed=[text(at) for at in needed],
        rpath=entries(DT_RPATH),
        runpath=entries(DT_RUNPATH),
        nodeflib=bool(tags.get(DT_FLAGS_1, 0) & DF_1_NODEFLIB),
        strings=strings,
    )


def dynamic_section(
    read: Reader, size: int, fields: tuple[Any, ...], path: str
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The SHT_DYNAMIC section and its linked string table ((offset, size) each), or None."""
    shoff, shentsize, shnum = fields[6], fields[11], fields[12]
    if shentsize < SECTION.size or shoff + shentsize * shnum > size:
        raise ElfError(f"{path}: truncated: section headers end past byte {size}")
    headers = read(shoff, shentsize * shnum)
    raw = [SECTION.unpack_from(headers, index * shentsize) for index in range(shnum)]
    for _, kind, _, _, offset, length, link, *_ in raw:
        if kind == SHT_DYNAMIC and link < len(raw):
            return (offset, length), (raw[link][4], raw[link][5])
    return None


def string_table(
    tags: dict[int, int],
    loads: list[tuple[int, int, int]],
    sections: tuple[tuple[int, int], tuple[int, int]] | None,
    path: str,
) -> tuple[int, int]:
    """The dynamic string table's file offset and size: DT_STRTAB's address through the
    PT_LOAD that holds it, else the dynamic section's linked section."""
    if DT_STRTAB in tags:
        address = tags[DT_STRTAB]
        for vaddr, filesz, offset in loads:
            if vaddr <= address < vaddr + filesz:
                return offset + address - vaddr, tags.get(DT_STRSZ, vaddr + filesz - address)
    if sections is not None:
        return sections[1]
    raise ElfError(f"{path}: DT_STRTAB lies in no loadable segment")


def exports_module_init(path: str, dynamic: Dynamic) -> bool:
    """Tell whether a shared object is a Python extension module: EXTENSION's names, or a plain
    .so whose dynamic strings hold PyInit_<its stem> (triton/_C/libtriton.so)."""
    name = os.path.basename(path)
    if EXTENSION.search(name):
        return True
    stem = name.split(".", 1)[0]
    start, count = dynamic.strings
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view,
        ):
            return view.find(b"PyInit_" + stem.encode() + b"\0", start, start + count) >= 0
    except (OSError, ValueError):
        return False


# --- /etc/ld.so.cache -----------------------------------------------------------------------


def parse_ld_so_cache(data: bytes) -> dict[str, list[str]]:
    """Map each library name in an ld.so.cache to its paths, in the file's order. Reads glibc's
    "glibc-ld.so.cache1.1" format, alone or after the old "ld.so-1.7.0" table, and the old
    table alone; anything else gives {} (ld.so then searches the system directories only)."""
    found: dict[str, list[str]] = {}

    def add(key: int, value: int, base: int) -> None:
        name, path = c_string(data, base + key), c_string(data, base + value)
        if name and path:
            found.setdefault(name, []).append(path)

    start = 0
    if data.startswith(CACHE_OLD) and len(data) >= CACHE_OLD_HEADER.size:
        (_, count) = CACHE_OLD_HEADER.unpack_from(data, 0)
        after = CACHE_OLD_HEADER.size + count * CACHE_OLD_ENTRY.size
        start = (after + 7) & ~7  # the new table follows, 8-byte aligned
        if not data.startswith(CACHE_NEW, start):
            for index in range(count):
                at = CACHE_OLD_HEADER.size + index * CACHE_OLD_ENTRY.size
                if at + CACHE_OLD_ENTRY.size > len(data):
                    break
                _, key, value = CACHE_OLD_ENTRY.unpack_from(data, at)
                add(key, value, after)  # old strings count from the end of the table
            return found
    if not data.startswith(CACHE_NEW, start) or len(data) < start + CACHE_NEW_HEADER.size:
        return found
    _, count, _, _, _ = CACHE_NEW_HEADER.unpack_from(data, start)
    for index in range(count):
        at = start + CACHE_NEW_HEADER.size + index * CACHE_NEW_ENTRY.size
        if at + CACHE_NEW_ENTRY.size > len(data):
            break
        _, key, value, _, _ = CACHE_NEW_ENTRY.unpack_from(data, at)
        add(key, value, start)  # new strings count from the new header
    return found


def c_string(data: bytes, at: int) -> str:
    """The NUL-terminated string at an offset ('' when out of range)."""
    end = data.find(b"\0", at)
    if at >= len(data) or end < 0:
        return ""
    return data[at:end].decode("utf-8", "surrogateescape")


def ld_so_cache(path: str = LD_SO_CACHE) -> dict[str, list[str]]:
    """This machine's ld.so.cache ({} when there is none)."""
    try:
        with open(path, "rb") as handle:
            return parse_ld_so_cache(handle.read())
    except OSError:
        return {}


# --- resolving ------------------------------------------------------------------------------


def multiarch() -> str:
    """The Debian multiarch triplet of this machine: x86_64-linux-gnu."""
    return getattr(sys.implementation, "_multiarch", "") or f"{os.uname().machine}-linux-gnu"


def system_dirs(triplet: str) -> list[str]:
    """ld.so's built-in directories: Debian/Ubuntu's multiarch ones, then the lib64 ones of
    other distributions (libraries of the wrong class in /lib and /usr/lib are passed over)."""
    return [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


@dataclass
class Linker:
    """The facts resolution depends on besides the object: LD_LIBRARY_PATH, the cache, the
    system directories and the values of $LIB and $PLATFORM."""

    ld_library_path: str = ""
    cache: dict[str, list[str]] = field(default_factory=dict)
    system: list[str] = field(default_factory=list)
    lib: str = "lib64"
    platform: str = "x86_64"
    # Unpacked wheels: a directory under such a root is also looked for in site-packages, so
    # a wheel is judged as it would be once installed here.
    overlays: list[tuple[str, list[str]]] = field(default_factory=list)
    known: dict[str, tuple[int, int, int] | None] = field(default_factory=dict, repr=False)

    @classmethod
    def here(cls, overlays: Sequence[tuple[str, list[str]]] = ()) -> Linker:
        """The linker of this process and machine."""
        triplet = multiarch()
        return cls(
            ld_library_path=os.environ.get("LD_LIBRARY_PATH", ""),
            cache=ld_so_cache(),
            system=system_dirs(triplet),
            lib=f"lib/{triplet}" if os.path.isdir(f"/usr/lib/{triplet}") else "lib64",
            platform=os.uname().machine,
            overlays=list(overlays),
        )

    def expand(self, entry: str, origin: str) -> str:
        """Expand $ORIGIN, $LIB and $PLATFORM; an empty entry is the working directory."""
        values = {"ORIGIN": origin, "LIB": self.lib, "PLATFORM": self.platform}
        text = DST.sub(lambda match: values[match[1] or match[2]], entry)
        return os.path.join(os.getcwd(), text) if not os.path.isabs(text) else text

    def places(self, folder: str) -> list[str]:
        """A search directory, and where it would be once an unpacked wheel is installed."""
        folder = os.path.normpath(folder)
        found = [folder]
        for root, installed in self.overlays:
            if folder == root or folder.startswith(root + os.sep):
                rest = os.path.relpath(folder, root)
                found += [os.path.normpath(os.path.join(site, rest)) for site in installed]
        return found

    def fits(self, path: str, wanted: tuple[int, ...]) -> bool:
        """Tell whether a file is an ELF of the wanted identity (each file read once)."""
        if path not in self.known:
            self.known[path] = identity_of(path)
        return self.known[path] == wanted

    def resolve(self, name: str, path: str, dynamic: Dynamic, wanted: tuple[int, ...]) -> Resolved:
        """Resolve one NEEDED name of the object at `path` as ld.so would, taking only an ELF
        of the object's class and machine (`wanted`)."""
        if "/" in name:
            candidate = self.expand(name, os.path.dirname(path))
            return (
                Resolved("path", candidate) if self.fits(candidate, wanted) else Resolved(MISSING)
            )
        origin = os.path.dirname(path)
        steps: list[tuple[str, list[str]]] = []
        if dynamic.rpath and not dynamic.runpath:
            steps.append(("rpath", [self.expand(e, origin) for e in dynamic.rpath]))
        if self.ld_library_path:
            entries = re.split("[:;]", self.ld_library_path)
            origin_of_program = os.path.dirname(os.path.realpath(sys.executable))
            steps.append(("LD_LIBRARY_PATH", [self.expand(e, origin_of_program) for e in entries]))
        if dynamic.runpath:
            steps.append(("runpath", [self.expand(e, origin) for e in dynamic.runpath]))
        for how, folders in steps:
            for folder in folders:
                for place in self.places(folder):
                    candidate = os.path.join(place, name)
                    if self.fits(candidate, wanted):
                        return Resolved(how, candidate)
        if not dynamic.nodeflib:
            for candidate in self.cache.get(name, []):
                if self.fits(candidate, wanted):
                    return Resolved("ld.so.cache", candidate)
            for folder in self.system:
                candidate = os.path.join(folder, name)
                if self.fits(candidate, wanted):
                    return Resolved("system dir", candidate)
        return Resolved(MISSING)


def is_driver_library(name: str) -> bool:
    """Tell whether a library comes with the NVIDIA driver (mounted at run time)."""
    return bool(DRIVER.fullmatch(name))


def package_hint(name: str, cuda_major: str = "13") -> str:
    """How to install a missing library, '' when not known."""
    for pattern, hint in PACKAGE_HINTS:
        match = re.fullmatch(pattern, name)
        if match:
            return match.expand(hint).replace("{cuda}", cuda_major)
    return ""


# --- the audit ------------------------------------------------------------------------------


# Files that are never ELF: skipped without a stat (site-packages holds tens of thousands).
TEXT_SUFFIXES = (
    ".py", ".pyc", ".pyi", ".h", ".hpp", ".cuh", ".inl", ".c", ".cc", ".cpp", ".cu", ".json",
    ".txt", ".md", ".rst", ".html", ".js", ".css", ".csv", ".yaml", ".yml", ".toml", ".cfg",
    ".png", ".jpg", ".svg", ".pem", ".typed", ".sh", ".cmake", ".proto", ".pxd", ".pyx",
)  # fmt: skip


def elf_entry(entry: os.DirEntry[str]) -> bool:
    """Tell whether a folder entry may be an ELF the loader reads: a shared object by name or
    an executable file (torch_shm_manager, triton's ptxas)."""
    name = entry.name
    if arch_audit.is_shared_object(name):
        return True
    if name.endswith(TEXT_SUFFIXES):
        return False
    try:
        return bool(entry.stat().st_mode & 0o111)
    except OSError:
        return False


def unpacked_entry(entry: os.DirEntry[str]) -> bool:
    """elf_entry, plus files without a suffix: `python -m zipfile -e` drops executable bits."""
    return elf_entry(entry) or "." not in entry.name


class Auditor:
    """Reads the files under the audited paths and resolves their NEEDED names."""

    def __init__(self, linker: Linker, roots: Sequence[str]) -> None:
        self.linker = linker
        self.roots = [os.path.normpath(root) for root in roots]  # where a closure may go
        self.files: list[ElfFile] = []
        self.by_path: dict[str, ElfFile] = {}  # real path -> file, the audited ones
        self.extra: dict[str, ElfFile | None] = {}  # read on demand (torch elsewhere)
        machine = MACHINES.get(os.uname().machine, 62)
        self.wanted = identity_of(os.path.realpath(sys.executable)) or (2, 1, machine)
        self.reals: dict[str, str] = {}

    def real(self, path: str) -> str:
        """A path's real path, each looked up once (realpath stats every component)."""
        if path not in self.reals:
            self.reals[path] = os.path.realpath(path)
        return self.reals[path]

    def read(
        self, paths: Sequence[str], wanted: Callable[[os.DirEntry[str]], bool] = elf_entry
    ) -> None:
        """Read every ELF file under `paths` (site-packages when empty)."""
        try:
            found = list(arch_audit.package_files(paths, wanted))
        except arch_audit.AuditInputError as exc:
            raise LinkInputError(str(exc)) from None
        for item in found:
            try:
                dynamic, error = read_dynamic(item.path), ""
            except (NotELF, OtherELF) as exc:  # OtherELF: a 32-bit library, which none loads
                if item.named:
                    raise LinkInputError(str(exc)) from None
                continue
            except (ElfError, OSError) as exc:
                dynamic, error = Dynamic(), str(exc)
            file = ElfFile(str(item.path), item.relative, item.package, str(item.root), dynamic)
            file.error = error
            self.files.append(file)
            self.by_path[self.real(file.path)] = file
            if str(item.root) not in self.roots:
                self.roots.append(str(item.root))

    def resolve_all(self) -> None:
        """Resolve every NEEDED name by search alone (no loaded library counted yet)."""
        for file in self.files:
            for name in file.dynamic.needed:
                file.needs[name] = self.search(file, name)

    def search(self, file: ElfFile, name: str) -> Resolved:
        found = self.linker.resolve(name, file.path, file.dynamic, self.wanted)
        if found.how == MISSING and is_driver_library(name):
            return Resolved(DRIVER_KIND)
        return found

    def file_at(self, path: str) -> ElfFile | None:
        """The audited file at a path, or one read now if it lies under a root (a closure
        that leaves the audited paths: the installed torch of a wheel's extension)."""
        real = self.real(path)
        if real in self.by_path:
            return self.by_path[real]
        if real not in self.extra:
            self.extra[real] = None
            if any(real.startswith(root + os.sep) for root in self.roots):
                try:
                    dynamic = read_dynamic(real)
                except (ElfError, OSError):
                    dynamic = None
                if dynamic is not None:
                    extra = ElfFile(real, real, "", "", dynamic)
                    extra.needs = {n: self.search(extra, n) for n in dynamic.needed}
                    self.extra[real] = extra
        return self.extra[real]

    def closure(self, starts: Iterable[str]) -> dict[str, str]:
        """Every library loading `starts` brings into the process, by each name ld.so matches
        it by (its SONAME, and the names it was found under), with its path."""
        loaded: dict[str, str] = {}
        queue = [path for path in starts if os.path.isfile(path)]
        seen: set[str] = set()
        while queue:
            path = queue.pop()
            real = self.real(path)
            if real in seen:
                continue
            seen.add(real)
            file = self.file_at(path)
            if file is None:
                continue
            if file.dynamic.soname:
                loaded.setdefault(file.dynamic.soname, path)
            for name, found in file.needs.items():
                if found.path:
                    loaded.setdefault(name, found.path)
                    queue.append(found.path)
        return loaded


def torch_folder(roots: Sequence[str]) -> str | None:
    """The torch package the audited objects load with: one in the audited trees, else the one
    this interpreter imports (found without importing it)."""
    for root in roots:
        if os.path.isfile(os.path.join(root, "torch", "__init__.py")):
            return os.path.join(root, "torch")
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
        return None
    return os.path.dirname(spec.origin)


def cuda_major(torch: str | None) -> str:
    """torch's CUDA major version from its version.py (13 when unknown), for package hints."""
    if torch:
        try:
            text = Path(torch, "version.py").read_text()
        except OSError:
            text = ""
        match = re.search(r"^cuda\b[^=]*=\s*['\"](\d+)", text, re.M)
        if match:
            return match[1]
    return "13"


def torch_preloads(torch: str, roots: Sequence[str], major: str) -> list[str]:
    """The libraries torch/__init__.py's _preload_cuda_deps loads from NVIDIA's wheels: its
    (folder, pattern) list read from the installed file, looked up as torch looks them up."""
    try:
        source = Path(torch, "__init__.py").read_text()
    except OSError:
        return []
    if "def _preload_cuda_deps" not in source:
        return []
    found = []
    for folder, pattern in PRELOADED.findall(source):
        for root in roots:
            hits = sorted(glob.glob(os.path.join(root, "nvidia", folder, "lib", pattern)))
            hits += sorted(glob.glob(os.path.join(root, "nvidia", f"cu{major}", "lib", pattern)))
            hits += sorted(glob.glob(os.path.join(root, folder, "lib", pattern)))
            if hits:
                found.append(hits[0])
                break
    return found


@dataclass
class Provider:
    """A package whose import loads libraries that later objects may link without a path."""

    label: str  # 'import torch'
    gate: set[str]  # linking one of these names means: loaded only after this import
    loaded: dict[str, str]  # name -> path of what the import loads


def torch_provider(auditor: Auditor, roots: Sequence[str]) -> Provider | None:
    """What `import torch` loads: torch/_C and libtorch_global_deps.so with their closures,
    and, in a CUDA build (global deps needs libcudart), the preloaded NVIDIA libraries."""
    torch = torch_folder(roots)
    if torch is None or not os.path.isdir(os.path.join(torch, "lib")):
        return None
    lib = os.path.join(torch, "lib")
    home = os.path.normpath(os.path.dirname(torch))
    if home not in auditor.roots:
        auditor.roots.append(home)  # an installed torch outside the audited paths is read too
    gate: set[str] = set()
    for name in os.listdir(lib):
        path = os.path.join(lib, name)
        if arch_audit.is_shared_object(name) and os.path.isfile(path):
            gate.add(name)
            file = auditor.file_at(path)
            if file is not None and file.dynamic.soname:
                gate.add(file.dynamic.soname)
    global_deps = os.path.join(lib, "libtorch_global_deps.so")
    starts = [*glob.glob(os.path.join(torch, "_C.*so")), global_deps]
    deps = auditor.file_at(global_deps)
    if deps is not None and any(n.startswith("libcudart.so") for n in deps.dynamic.needed):
        site = [*auditor.roots, *[str(p) for p in arch_audit.site_packages()]]
        starts += torch_preloads(torch, site, cuda_major(torch))
    return Provider("import torch", gate, auditor.closure(starts))


def module_providers(auditor: Auditor, names: set[str]) -> list[Provider]:
    """Python extension modules among the audited files whose SONAME (or file name) some file
    needs but cannot find: such a file is loaded only after that module is imported."""
    providers = []
    for file in auditor.files:
        own = {os.path.basename(file.path), file.dynamic.soname} - {""}
        if not own & names or not exports_module_init(file.path, file.dynamic):
            continue
        label = f"import {file.package}"
        providers.append(Provider(label, own, auditor.closure([file.path])))
    return providers


def apply_providers(auditor: Auditor, providers: Sequence[Provider]) -> None:
    """Let loaded libraries resolve the missing names of the files loaded after them, and of
    the files those load in turn (ld.so resolves a dependency when its loader is loaded)."""
    after: dict[str, set[int]] = {}  # real path -> providers it is loaded after
    for file in auditor.files:
        missing = {n for n, r in file.needs.items() if r.how == MISSING}
        for index, provider in enumerate(providers):
            if missing & provider.gate:
                after.setdefault(auditor.real(file.path), set()).add(index)
    queue = list(after)
    while queue:
        real = queue.pop()
        file = auditor.by_path.get(real)
        if file is None:
            continue
        for name, found in list(file.needs.items()):
            for index in sorted(after[real]):
                provider = providers[index]
                if found.how == MISSING and name in provider.loaded:
                    found = Resolved(LOADED, provider.loaded[name], provider.label)
                    file.needs[name] = found
            if found.path:
                dependency = auditor.real(found.path)
                if dependency in auditor.by_path and not after[real] <= after.get(
                    dependency, set()
                ):
                    after.setdefault(dependency, set()).update(after[real])
                    queue.append(dependency)


def mark_optional(auditor: Auditor, torch_names: set[str]) -> None:
    """Lower what nothing links and may be loaded only on demand: the missing libraries of
    NVIDIA's plugins are optional (nvshmem's UCX and MPI transports, cuFile's RDMA), those of
    other packages' extension modules make them unimportable, a warning (numba's TBB pool,
    mpi4py's MPICH variant, CuPy's cuTENSOR: their packages try them and go on). Modules of
    torch, torchvision, torchaudio, triton, and modules that link torch's libraries, stay
    failures."""
    linked = {auditor.real(r.path) for f in auditor.files for r in f.needs.values() if r.path}
    for file in auditor.files:
        if auditor.real(file.path) in linked:
            continue
        module = bool(EXTENSION.search(os.path.basename(file.path)))
        if file.vendor and not module:
            kind = OPTIONAL
        elif (
            module
            and file.package not in STRICT_PACKAGES
            and not set(file.dynamic.needed) & torch_names
            and all(found.how != LOADED for found in file.needs.values())
        ):
            kind = UNIMPORTABLE
        else:
            continue
        for name, found in file.needs.items():
            if found.how == MISSING:
                file.needs[name] = Resolved(kind)


def audit(paths: Sequence[str] = (), overlays: Sequence[tuple[str, list[str]]] = ()) -> LinkAudit:
    """Audit the ELF files under `paths` (site-packages when empty); `overlays` maps unpacked
    wheels to the site-packages they would be installed in."""
    start = time.perf_counter()
    linker = Linker.here(overlays)
    site = [str(path.resolve()) for path in arch_audit.site_packages()]
    auditor = Auditor(linker, site)
    auditor.read(paths)
    auditor.resolve_all()
    missing = {n for f in auditor.files for n, r in f.needs.items() if r.how == MISSING}
    if missing:
        torch = torch_provider(auditor, auditor.roots)
        providers = [torch] if torch else []
        providers += module_providers(auditor, missing - (torch.gate if torch else set()))
        apply_providers(auditor, providers)
        mark_optional(auditor, torch.gate if torch else set())
    major = cuda_major(torch_folder(auditor.roots))
    rows = judge_all(auditor.files, major) + runtime_rows(auditor)
    return LinkAudit(auditor.files, rows, linker.ld_library_path, time.perf_counter() - start)


def runtime_rows(auditor: Auditor) -> list[PackageRow]:
    """A warning row when the files hold NCCL and a library it opens at run time is missing."""
    names = [file.path for file in auditor.files]
    names += [name for file in auditor.files for name in file.dynamic.needed]

    def resolve(name: str) -> str:
        return auditor.linker.resolve(name, sys.executable, Dynamic(), auditor.wanted).path

    lost = runtimelibs.missing(names, resolve, auditor.linker.system)
    if not lost:
        return []
    text = runtimelibs.warning_text(lost)
    return [PackageRow(RUNTIME_ROW, WARN, text, False, 0, [entry.name for entry in lost])]


# --- verdicts -------------------------------------------------------------------------------


def judge_all(files: Sequence[ElfFile], major: str) -> list[PackageRow]:
    """One row per package, in name order."""
    packages: dict[str, list[ElfFile]] = {}
    for file in files:
        packages.setdefault(file.package, []).append(file)
    return [judge(name, packages[name], major) for name in sorted(packages, key=str.lower)]


def files_text(paths: Sequence[str], limit: int = 3) -> str:
    """Name up to `limit` files, then how many more."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def judge(package: str, files: list[ElfFile], major: str) -> PackageRow:
    """Give one package its status and detail: fail when a file cannot be read or a NEEDED
    name resolves nowhere, pass otherwise, naming the driver's and optional libraries."""
    needed = sorted({name for file in files for name in file.needs})
    row = PackageRow(package, PASS, "", files[0].vendor, len(files), needed)
    by_name: dict[str, list[str]] = {}
    unimportable: dict[str, list[str]] = {}
    optional: dict[str, list[str]] = {}
    for file in files:
        for name, found in file.needs.items():
            if found.how == MISSING:
                by_name.setdefault(name, []).append(file.relative)
            elif found.how == UNIMPORTABLE:
                unimportable.setdefault(name, []).append(file.relative)
            elif found.how == OPTIONAL:
                optional.setdefault(file.relative, []).append(name)
            elif found.how == DRIVER_KIND:
                if name not in row.driver:
                    row.driver.append(name)
            elif found.how == LOADED:
                row.loaded.setdefault(name, found.by)
    row.missing = [
        {"library": name, "needed_by": needers, "hint": package_hint(name, major)}
        for name, needers in sorted(by_name.items())
    ]
    row.unimportable = [
        {"library": name, "needed_by": needers, "hint": package_hint(name, major)}
        for name, needers in sorted(unimportable.items())
    ]
    row.optional = [{"file": f, "libraries": sorted(n)} for f, n in sorted(optional.items())]
    row.driver.sort()
    broken = [file for file in files if file.error]
    clauses = [f"cannot read {file.error}" for file in broken]
    clauses += ["missing " + text for text in missing_texts(row.missing)]
    if clauses:
        row.status = FAIL
        row.detail = "; ".join(clauses)
        return row
    count = len(files)
    if row.unimportable:
        row.status = WARN
        row.detail = "; ".join(
            f"missing {text}: that module cannot be imported (fine if {package} does without it)"
            for text in missing_texts(row.unimportable)
        )
        return row
    row.detail = f"{count} file{'s' if count != 1 else ''}, {len(needed)} libraries: all resolve"
    clauses = notes([row])
    if clauses:
        row.detail += " (" + "; ".join(clauses) + ")"
    return row


def notes(rows: Sequence[PackageRow]) -> list[str]:
    """What passing rows owe to something other than a search: libraries loaded by an import,
    the driver's, and optional plugins without their system libraries."""
    clauses = []
    loaded = {name: by for row in rows for name, by in row.loaded.items()}
    if loaded:
        clauses.append(f"{len(loaded)} loaded by {', '.join(sorted(set(loaded.values())))}")
    driver = sorted({name for row in rows for name in row.driver})
    if driver:
        clauses.append(f"{' '.join(driver)} from the NVIDIA driver at run time")
    plugins = [
        f"{os.path.basename(item['file'])} ({' '.join(item['libraries'])})"
        for row in rows
        for item in row.optional
    ]
    if plugins:
        clauses.append("optional plugins, loaded only when used, lack: " + ", ".join(plugins))
    return clauses


def missing_texts(items: Sequence[dict[str, Any]]) -> list[str]:
    """'libopenblas.so.0 (needed by torch/lib/libtorch_cpu.so; apt-get install libopenblas0)',
    libraries that the same files need and the same package provides named together."""
    groups: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for item in items:
        key = (tuple(item["needed_by"]), item["hint"])
        groups.setdefault(key, []).append(item["library"])
    texts = []
    for (needers, hint), names in groups.items():
        tail = f"; {hint}" if hint else ""
        texts.append(f"{' '.join(names)} (needed by {files_text(list(needers))}{tail})")
    return texts


# --- output ---------------------------------------------------------------------------------


def render_table(result: LinkAudit, paths: Sequence[str] = ()) -> str:
    """Lay the rows out as the arch audit does; passing NVIDIA wheels share one row."""
    shown = [(r.package, r.status, r.detail) for r in result.rows if not r.vendor]
    vendor = [r for r in result.rows if r.vendor]
    shown += [(r.package, r.status, r.detail) for r in vendor if r.status != PASS]
    passed = [r for r in vendor if r.status == PASS]
    if passed:
        every = "NVIDIA wheels whose libraries all resolve: " + ", ".join(r.package for r in passed)
        clauses = notes(passed)
        if clauses:
            every += " (" + "; ".join(clauses) + ")"
        shown.append((f"{arch_audit.VENDOR} ({len(passed)})", PASS, every))
    table = [("package", "status", "detail"), *shown]
    width0 = max(len(r[0]) for r in table)
    width1 = max(len(r[1]) for r in table)
    where = ", ".join(paths) if paths else "site-packages"
    lines = [f"link audit of {where} (LD_LIBRARY_PATH={result.ld_library_path or 'unset'})"]
    for index, (name, status, detail) in enumerate(table):
        lines.append(f"{name:<{width0}}  {status:<{width1}}  {detail}".rstrip())
        if index == 0:
            lines.append(f"{'-' * width0}  {'-' * width1}  {'-' * 6}")
    if not result.rows:
        lines.append("(no ELF file)")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: LinkAudit) -> str:
    """The last line: OK with the counts, or FAILED naming each missing library."""
    counts = f"{len(result.files)} files, {len(result.needed)} libraries needed"
    if result.ok:
        warned = warnings(result.rows)
        return f"OK  ({counts}, {result.seconds:.1f} s)" + (f"; warn: {warned}" if warned else "")
    return f"FAILED: {failures(result.rows)}  ({counts}, {result.seconds:.1f} s)"


def failures(rows: Sequence[PackageRow]) -> str:
    """Each missing library with the files that need it and its package, across packages."""
    merged: dict[str, dict[str, Any]] = {}
    unreadable = []
    for row in rows:
        for item in row.missing:
            entry = merged.setdefault(item["library"], {**item, "needed_by": []})
            entry["needed_by"] += item["needed_by"]
        if row.status == FAIL and not row.missing:
            unreadable.append(f"{row.package} ({row.detail})")
    return ", ".join(missing_texts([item for _, item in sorted(merged.items())]) + unreadable)


def warnings(rows: Sequence[PackageRow]) -> str:
    """The modules that cannot be imported, with the libraries they miss, and the libraries
    opened at run time that are missing."""
    texts = missing_texts([item for row in rows for item in row.unimportable])
    texts += [row.detail for row in rows if row.package == RUNTIME_ROW]
    return ", ".join(texts)


def summary(data: dict[str, Any]) -> str:
    """One line for smoke's "link audit" row, from audit_data's object."""
    rows = rows_from_data(data)
    if not data["ok"]:
        return failures(rows)
    runtime = [row.detail for row in rows if row.package == RUNTIME_ROW]
    if runtime and not any(row.unimportable for row in rows):
        return "; ".join(runtime)
    if any(row.unimportable for row in rows):
        return "modules that cannot be imported (fine if their packages do without them): " + (
            warnings(rows)
        )
    counts = f"{data['files']} files need {data['libraries']} libraries; all resolve"
    driver = sorted({name for row in rows for name in row.driver})
    optional = sum(len(row.optional) for row in rows)
    clauses = []
    if driver:
        clauses.append(f"{' '.join(driver)} from the NVIDIA driver at run time")
    if optional:
        plural = "s" if optional != 1 else ""
        clauses.append(f"{optional} optional NVIDIA plugin{plural} lack their system libraries")
    return counts + (f" ({'; '.join(clauses)})" if clauses else "")


def audit_data(result: LinkAudit) -> dict[str, Any]:
    """The audit as a JSON-ready object: ok, files, libraries, one object per package."""
    return {
        "ok": result.ok,
        "warned": result.warned,
        "files": len(result.files),
        "libraries": len(result.needed),
        "ld_library_path": result.ld_library_path,
        "packages": [asdict(row) for row in result.rows],
        "seconds": round(result.seconds, 3),
    }


def rows_from_data(data: dict[str, Any]) -> list[PackageRow]:
    """Package rows back from audit_data's object (smoke's background worker)."""
    return [PackageRow(**row) for row in data["packages"]]


# --- smoke's background audit ---------------------------------------------------------------


class AuditInBackground(ModuleInBackground):
    """The link audit of site-packages in a second process, started before smoke imports
    torch, so its reads overlap torch's import (about 0.7 s cold for torch 2.14.1 with its
    NVIDIA wheels)."""

    def __init__(self) -> None:
        super().__init__("torchkiln.inimage.links", WORKER, timeout=AUDIT_TIMEOUT_S)

    def result(self) -> dict[str, Any]:
        """The worker's audit_data object, or an audit in this process when it has none."""
        try:
            data = json.loads(self.output() or "null")
        except ValueError:
            data = None
        if isinstance(data, dict) and "packages" in data:
            return data
        return audit_data(audit())


# --- what the build must install ------------------------------------------------------------


def needs_from_system(paths: Sequence[str]) -> list[tuple[str, str]]:
    """The NEEDED names of the ELF files under `paths` that those trees do not satisfy (by
    rpath/runpath/$ORIGIN into them, or by a file of theirs with that name), driver
    libraries left out: (name, the path it resolves to here or '')."""
    linker = Linker.here()
    trees = [os.path.realpath(path) for path in paths]
    auditor = Auditor(linker, trees)
    auditor.read(paths, unpacked_entry)
    inside: set[str] = set()
    for tree in trees:
        for _, _, names in os.walk(tree):
            inside.update(names)
    found: dict[str, str] = {}
    for file in auditor.files:
        for name in file.dynamic.needed:
            if name in inside or is_driver_library(name):
                continue
            resolved = linker.resolve(name, file.path, file.dynamic, auditor.wanted)
            real = auditor.real(resolved.path) if resolved.path else ""
            if real and any(real.startswith(tree + os.sep) for tree in trees):
                continue
            if not found.get(name):
                found[name] = resolved.path
    return sorted(found.items())


# --- command line ---------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message}; see --help", file=sys.stderr, flush=True)
        raise SystemExit(2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = OneLineParser(
        prog="python -m torchkiln.inimage.links",
        description="Check that every DT_NEEDED entry of every ELF file in site-packages (or "
        "in PATHs: folders, files, .whl) resolves as the dynamic linker would.",
        epilog="exit status: 0 every library resolves, 1 some library is missing, 2 bad input",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--needs-from-system",
        action="store_true",
        help="print 'soname<TAB>resolved path' for each library the PATHs need but do not hold",
    )
    parser.add_argument("--smoke-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="folders, files or wheels")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the audit (or --needs-from-system) and print it."""
    args = parse_args(argv)
    if args.needs_from_system and not args.paths:
        print(
            "links: --needs-from-system needs the PATHs of the unpacked wheels",
            file=sys.stderr,
            flush=True,
        )
        return 2
    try:
        with arch_audit.unpacked_wheels(args.paths) as (local, shown):
            if args.needs_from_system:
                for name, path in needs_from_system(local):
                    print(f"{name}\t{path}", flush=True)
                return 0
            site = [str(path.resolve()) for path in arch_audit.site_packages()]
            result = audit(local, [(folder, site) for folder in shown])
            if args.smoke_worker:
                print(json.dumps(audit_data(result)), flush=True)
                return 0
            if args.json:
                text = json.dumps(audit_data(result), indent=2)
            else:
                text = render_table(result, args.paths)
            print(arch_audit.shown_paths(text, shown), flush=True)
    except (LinkInputError, arch_audit.AuditInputError) as exc:
        print(f"links: {exc}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
