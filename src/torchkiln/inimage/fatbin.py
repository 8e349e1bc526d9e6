"""Read which GPU archs the NVIDIA fat binaries in an ELF shared object hold, without cuobjdump.

Where the device code is read from:

- the `.nv_fatbin` section: what nvcc emits for shared objects, what the CUDA runtime registers
  (through `.nvFatBinSegment`) and all that `cuobjdump --list-elf --list-ptx` lists. Walked
  container by container; a corrupt one is an error.
- a scan of the other loadable data sections (allocated, not executable) for the container
  magic, 8-byte aligned, counting a hit only when its entries fill the container exactly: some
  libraries load their kernels themselves with cuModuleLoadData, and cuobjdump misses them.
  cuFFT 12.0 keeps all its kernels in `.ldata` (11,255 containers; its `.nv_fatbin` holds one
  kernel-less sm_75 cubin), cublasLt 13.1 has 383 containers in `.cask_resource`. Stray magic
  bytes are rejected (libcudnn_graph.so.9 has one in .text). Not scanned: `__nv_relfatbin`,
  relocatable device code for device linking that is never loaded as-is (libtorch_nvshmem.so).
- an ELF without section headers is scanned whole.

A cubin without a kernel (no .text.<name> section; nvcc's device-link step makes them) is left
out of the archs when it is stored uncompressed, as libcufftw.so.12's only cubin is; a
compressed one (zstd needs Python 3.14) counts as code.

Standard library only; the file is memory-mapped and only container and entry headers are
touched (a scan jumps over each container it accepts), so a 1 GB libtorch_cuda.so costs a few
thousand page reads.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

MAGIC = 0xBA55ED50
MAGIC_BYTES = struct.pack("<I", MAGIC)
CONTAINER = struct.Struct("<IHHQ")  # magic, version, header size, size of what follows
ENTRY = struct.Struct("<HHIQIIHHIIIQ")  # kind, -, header size, payload size ... flags (+40)
ENTRY_MIN = 64

KIND_PTX, KIND_ELF = 1, 2

# Entry flags, verified against cuobjdump 13.5 on nvcc 13.0 builds of every suffix (see
# tests/fixtures/fatbin/README.md) and on torch 2.14.1, cuBLAS 13.1 and cuDNN 9.24 libraries.
# The a/f suffix is not in the cubin's ELF e_flags; it is only here, the same for SASS and PTX.
FLAG_64BIT = 0x1
FLAG_DEBUG = 0x2
FLAG_LINUX = 0x10
FLAG_COMPRESSED_LZ4 = 0x2000  # older toolkits; not seen in CUDA 13 libraries
FLAG_COMPRESSED_ZSTD = 0x8000  # payload starts with zstd's magic; nvcc 13 -compress-all, PTX
FLAG_ARCH_SPECIFIC = 0x100000  # sm_90a, compute_100a ...
FLAG_FAMILY = 0x200000  # sm_100f, compute_120f ... (cuobjdump prints SASS sm_100f as sm_100)
# 0x1000000 comes with the 96-byte entry header of every sm_100+ cubin, suffix or not: no arch.

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
SECTION = struct.Struct("<IIQQQQIIQQ")
SHT_PROGBITS, SHT_NOBITS = 1, 8
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
SHN_XINDEX = 0xFFFF
SECTION_NAME = ".nv_fatbin"
NOT_LOADED = ("__nv_relfatbin",)
WHOLE_FILE = "(no section headers)"


class FatbinError(ValueError):
    """A file that is not a readable 64-bit little-endian ELF, or whose fatbin is cut short."""


class NotELF(FatbinError):
    """A file that is no 64-bit little-endian ELF at all (a text file, a 32-bit library)."""


@dataclass
class FatbinArchs:
    """The archs of the device code in one file: SASS and PTX names as torch spells them."""

    sass: list[str] = field(default_factory=list)
    ptx: list[str] = field(default_factory=list)
    containers: int = 0
    entries: int = 0
    empty: int = 0  # cubins without a kernel, left out of sass
    sections: list[str] = field(default_factory=list)  # where fatbins were found

    @property
    def binaries(self) -> list[str]:
        """SASS then PTX names, the input archs.covers() takes."""
        return self.sass + self.ptx


@dataclass(frozen=True)
class Section:
    """What the reader needs of one ELF section header."""

    name: str
    kind: int
    flags: int
    offset: int
    size: int


def arch_sort_key(name: str) -> tuple[int, str]:
    """Order sm_86 < sm_90 < sm_90a < sm_100 (numerically, not as text)."""
    number = name.split("_", 1)[-1]
    digits = number.rstrip("af")
    return (int(digits) if digits.isdigit() else 0, number)


def entry_name(kind: int, arch: int, flags: int) -> str:
    """Name one entry the way nvcc and torch do: 'sm_90a', 'compute_120f'."""
    suffix = "a" if flags & FLAG_ARCH_SPECIFIC else "f" if flags & FLAG_FAMILY else ""
    return f"{'compute' if kind == KIND_PTX else 'sm'}_{arch}{suffix}"


def read_archs(path: str | os.PathLike[str]) -> FatbinArchs:
    """Read the SASS and PTX archs of the fat binaries in one ELF file."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        sections = read_sections(handle, size, str(path))
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return archs_in(view, sections, str(path))


def archs_in(view: mmap.mmap | bytes, sections: list[Section] | None, path: str) -> FatbinArchs:
    """Collect the archs of every fatbin in the file (see the module doc for where they are)."""
    found = FatbinArchs()
    names: set[tuple[int, str]] = set()
    for label, start, end in regions(sections, len(view)):
        if label == SECTION_NAME:
            # Only headers are read here: without this the kernel reads whole payloads ahead.
            advise(view, start, end, "MADV_RANDOM")
            items = walk_section(view, start, end, path)
        else:
            advise(view, start, end, "MADV_SEQUENTIAL")  # a scan reads it all: read ahead
            items = scan(view, start, end)
        hit = False
        for kind, name, code in items:
            hit = True
            if name is None:
                found.containers += 1
            elif code:
                found.entries += 1
                names.add((kind, name))
            else:
                found.empty += 1
        if hit and label not in found.sections:
            found.sections.append(label)
    found.sass = sorted((n for k, n in names if k == KIND_ELF), key=arch_sort_key)
    found.ptx = sorted((n for k, n in names if k == KIND_PTX), key=arch_sort_key)
    return found


def advise(view: mmap.mmap | bytes, start: int, end: int, how: str) -> None:
    """Tell the kernel how a byte range of a mapped file will be read (a hint: errors pass)."""
    option = getattr(mmap, how, None)
    if isinstance(view, mmap.mmap) and option is not None and end > start:
        aligned = start - start % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):
            view.madvise(option, aligned, end - aligned)


def regions(sections: list[Section] | None, size: int) -> list[tuple[str, int, int]]:
    """The byte ranges to read, by section: .nv_fatbin to walk, loadable data to scan, or the
    whole file for an ELF without section headers."""
    if sections is None:
        return [(WHOLE_FILE, 0, size)]
    return [
        (s.name, s.offset, min(s.offset + s.size, size))
        for s in sections
        if s.kind == SHT_PROGBITS
        and (s.name == SECTION_NAME or (s.flags & SHF_ALLOC and not s.flags & SHF_EXECINSTR))
        and s.name not in NOT_LOADED
    ]


def read_sections(handle: BinaryIO, size: int, path: str) -> list[Section] | None:
    """Read the section headers and their names; None for an ELF without section headers."""
    head = handle.read(ELF_HEADER.size)
    if head[:4] != b"\x7fELF":
        raise NotELF(f"{path}: not an ELF file (it does not start with \\x7fELF)")
    if len(head) < ELF_HEADER.size:
        raise FatbinError(f"{path}: truncated ELF header ({size} bytes)")
    if head[4] != 2 or head[5] != 1:
        raise NotELF(f"{path}: not a 64-bit little-endian ELF; only those are read")
    fields = ELF_HEADER.unpack(head)
    shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
    if shoff == 0:
        return None
    if shentsize < SECTION.size:
        raise FatbinError(f"{path}: section header size {shentsize} is too small")
    first = read_at(handle, shoff, shentsize, size, path, "section headers")
    zeroth = SECTION.unpack_from(first)
    # ELF extended numbering: counts too large for the header live in section 0.
    if shnum == 0:
        shnum = zeroth[5]
    if shstrndx == SHN_XINDEX:
        shstrndx = zeroth[6]
    table = read_at(handle, shoff, shentsize * shnum, size, path, "section headers")
    raw = [SECTION.unpack_from(table, i * shentsize) for i in range(shnum)]
    if not raw or shstrndx >= len(raw):
        raise FatbinError(f"{path}: section name table index {shstrndx} is out of range")
    names_offset, names_size = raw[shstrndx][4], raw[shstrndx][5]
    strings = read_at(handle, names_offset, names_size, size, path, "section names")
    sections = []
    for name_at, kind, flags, _, offset, length, *_ in raw:
        end = strings.find(b"\0", name_at)
        name = strings[name_at : end if end >= 0 else None].decode("latin-1")
        if kind != SHT_NOBITS and offset + length > size and name == SECTION_NAME:
            raise FatbinError(
                f"{path}: truncated: {SECTION_NAME} ends at byte {offset + length}, the file at "
                f"{size}"
            )
        sections.append(Section(name, kind, flags, offset, length))
    return sections


def read_at(handle: BinaryIO, offset: int, length: int, size: int, path: str, what: str) -> bytes:
    """Read a byte range, refusing one that runs past the end of the file."""
    if offset + length > size:
        raise FatbinError(
            f"{path}: truncated: {what} end at byte {offset + length}, the file at {size}"
        )
    handle.seek(offset)
    return handle.read(length)


# (kind, name, has kernels) for an entry; (0, None, False) marks the start of a container.
Found = tuple[int, str | None, bool]


def walk_section(view: mmap.mmap | bytes, start: int, end: int, path: str) -> Iterator[Found]:
    """Yield the containers and entries of one .nv_fatbin section, refusing a corrupt one."""
    position = start
    while position + CONTAINER.size <= end:
        magic = struct.unpack_from("<I", view, position)[0]
        if magic != MAGIC:
            position += 8  # containers are 8-byte aligned; padding between them is skipped
            continue
        entries, problem = container_entries(view, position, end)
        if problem:
            raise FatbinError(f"{path}: {SECTION_NAME} container at byte {position}: {problem}")
        yield 0, None, False
        yield from entries
        _, _, header_size, body = CONTAINER.unpack_from(view, position)
        position += (header_size + body + 7) & ~7


def container_entries(
    view: mmap.mmap | bytes, position: int, limit: int
) -> tuple[list[Found], str | None]:
    """Read one container's entries; the problem, if any, says why it is not a valid one."""
    _, version, header_size, body = CONTAINER.unpack_from(view, position)
    if version != 1 or header_size != CONTAINER.size:
        return [], f"unknown container version {version} / header size {header_size}"
    start, end = position + header_size, position + header_size + body
    if end > limit:
        return [], f"truncated: {body} bytes of entries run past byte {limit}"
    found: list[Found] = []
    entry = start
    while entry < end:
        if entry + ENTRY_MIN > end:
            return [], f"truncated entry header at byte {entry}"
        kind, _, entry_header, payload, *_, arch, _, _, flags = ENTRY.unpack_from(view, entry)
        if kind not in (KIND_PTX, KIND_ELF) or entry_header < ENTRY_MIN:
            return [], f"entry at byte {entry} has kind {kind}, header size {entry_header}"
        code = True
        if kind == KIND_ELF and not flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD):
            code = cubin_has_kernels(view, entry + entry_header, payload)
        found.append((kind, entry_name(kind, arch, flags), code))
        entry += entry_header + payload
    if entry != end:
        return [], f"entries end at byte {entry}, not at the container's end {end}"
    return found, None


def cubin_has_kernels(view: mmap.mmap | bytes, start: int, size: int) -> bool:
    """Tell whether an uncompressed cubin defines a kernel (a .text.<name> section); True when
    it cannot tell. nvcc's device-link step adds kernel-less cubins: libcufftw.so.12 holds just
    one for sm_75, and its arch says nothing about where the library runs."""
    head = bytes(view[start : start + ELF_HEADER.size])
    if len(head) < ELF_HEADER.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return True
    fields = ELF_HEADER.unpack(head)
    shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
    if shentsize < SECTION.size or shstrndx >= shnum or shoff + shentsize * shnum > size:
        return True
    names_at, names_size = SECTION.unpack_from(view, start + shoff + shstrndx * shentsize)[4:6]
    if names_at + names_size > size:
        return True
    # A kernel's code is its own .text.<mangled name> section.
    return view.find(b".text.", start + names_at, start + names_at + names_size) != -1


def scan(view: mmap.mmap | bytes, start: int, end: int) -> Iterator[Found]:
    """Yield the valid containers found by their magic between two offsets."""
    position = view.find(MAGIC_BYTES, start, end)
    while position != -1:
        if position % 8 == 0 and position + CONTAINER.size <= end:
            entries, problem = container_entries(view, position, end)
            if problem is None and entries:
                yield 0, None, False
                yield from entries
                _, _, header_size, body = CONTAINER.unpack_from(view, position)
                position = view.find(MAGIC_BYTES, position + header_size + body, end)
                continue
        position = view.find(MAGIC_BYTES, position + 1, end)
