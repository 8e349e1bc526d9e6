"""Unit tests for the fat binary reader, on real nvcc-built shared objects
(tests/fixtures/fatbin/README.md says how each was made and what cuobjdump lists)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from torchkiln.inimage import fatbin

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fatbin"


@pytest.mark.parametrize(
    ("name", "sass", "ptx", "sections"),
    [
        ("sm86.so", ["sm_86"], [], [".nv_fatbin"]),
        ("sm86_sm90.so", ["sm_86", "sm_90"], [], [".nv_fatbin"]),
        ("sm90_ptx90.so", ["sm_90"], ["compute_90"], [".nv_fatbin"]),
        ("sm90a.so", ["sm_90a"], [], [".nv_fatbin"]),
        ("sm100f.so", ["sm_100f"], [], [".nv_fatbin"]),
        ("ptx120.so", [], ["compute_120"], [".nv_fatbin"]),
        ("ptx100a_ptx120f.so", [], ["compute_100a", "compute_120f"], [".nv_fatbin"]),
        ("compressed.so", ["sm_86", "sm_90"], ["compute_90"], [".nv_fatbin"]),
        ("embedded_sm89.so", ["sm_89"], [], [".rodata"]),
    ],
)
def test_archs_of_nvcc_builds(name: str, sass: list[str], ptx: list[str], sections: list[str]):
    found = fatbin.read_archs(FIXTURES / name)
    assert (found.sass, found.ptx, found.sections) == (sass, ptx, sections)
    assert found.binaries == sass + ptx


def test_kernel_less_cubins_are_no_device_code() -> None:
    # cuobjdump lists sm_75 twice for this host-only library (like libcufftw.so.12).
    found = fatbin.read_archs(FIXTURES / "nokernel_sm75.so")
    assert (found.sass, found.ptx, found.entries) == ([], [], 0)
    assert (found.containers, found.empty) == (2, 2)


def test_device_link_stub_is_counted_apart_from_the_kernel() -> None:
    found = fatbin.read_archs(FIXTURES / "sm86.so")
    assert (found.containers, found.entries, found.empty) == (2, 1, 1)


@pytest.mark.parametrize(
    ("kind", "arch", "flags", "name"),
    [
        (fatbin.KIND_ELF, 86, 0x11, "sm_86"),
        (fatbin.KIND_ELF, 90, 0x108011, "sm_90a"),
        (fatbin.KIND_ELF, 100, 0x1108011, "sm_100a"),
        (fatbin.KIND_ELF, 103, 0x1208011, "sm_103f"),
        (fatbin.KIND_ELF, 120, 0x1008011, "sm_120"),
        (fatbin.KIND_PTX, 90, 0x108011, "compute_90a"),
        (fatbin.KIND_PTX, 120, 0x208011, "compute_120f"),
        (fatbin.KIND_PTX, 121, 0x8011, "compute_121"),
    ],
    ids=lambda value: hex(value) if isinstance(value, int) and value > 200 else str(value),
)
def test_entry_flags_give_the_suffix(kind: int, arch: int, flags: int, name: str) -> None:
    assert fatbin.entry_name(kind, arch, flags) == name


def test_archs_sort_by_number_not_text() -> None:
    names = ["sm_120", "sm_90a", "sm_100", "sm_86", "sm_90", "sm_100f"]
    assert sorted(names, key=fatbin.arch_sort_key) == [
        "sm_86",
        "sm_90",
        "sm_90a",
        "sm_100",
        "sm_100f",
        "sm_120",
    ]


def test_elf_without_section_headers_is_scanned_whole(tmp_path: Path) -> None:
    data = bytearray((FIXTURES / "sm90_ptx90.so").read_bytes())
    struct.pack_into("<QHHHH", data, 0x28, 0, 0, 0, 0, 0)  # no e_shoff, e_shnum ...
    target = tmp_path / "stripped.so"
    target.write_bytes(bytes(data))
    found = fatbin.read_archs(target)
    assert (found.sass, found.ptx) == (["sm_90"], ["compute_90"])
    assert found.sections == [fatbin.WHOLE_FILE]


def container_bytes() -> bytes:
    """The one fatbin container embedded in embedded_sm89.so, cut out of its .rodata."""
    data = (FIXTURES / "embedded_sm89.so").read_bytes()
    start = data.index(fatbin.MAGIC_BYTES)
    _, _, header, body = fatbin.CONTAINER.unpack_from(data, start)
    return data[start : start + header + body]


def test_scan_takes_only_aligned_complete_containers() -> None:
    container = container_bytes()
    aligned = bytes(64) + container + bytes(64)
    assert fatbin.archs_in(aligned, None, "blob").sass == ["sm_89"]
    unaligned = bytes(61) + container + bytes(64)
    assert fatbin.archs_in(unaligned, None, "blob").sass == []
    stray = bytes(64) + fatbin.MAGIC_BYTES + b"\x01\x00\x10\x00" + bytes(200)
    found = fatbin.archs_in(stray, None, "blob")
    assert (found.sass, found.containers) == ([], 0)
    cut = bytes(64) + container[:-40]
    assert fatbin.archs_in(cut, None, "blob").sass == []


def test_not_elf_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "libc.so"
    script.write_text("/* GNU ld script */\nGROUP ( libc.so.6 )\n")
    with pytest.raises(fatbin.NotELF, match="not an ELF file"):
        fatbin.read_archs(script)
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    with pytest.raises(fatbin.NotELF):
        fatbin.read_archs(empty)


def test_32_bit_elf_is_refused(tmp_path: Path) -> None:
    data = bytearray((FIXTURES / "sm86.so").read_bytes())
    data[4] = 1  # ELFCLASS32
    target = tmp_path / "elf32.so"
    target.write_bytes(bytes(data))
    with pytest.raises(fatbin.NotELF, match="64-bit little-endian"):
        fatbin.read_archs(target)


def section(path: Path, name: str) -> tuple[int, fatbin.Section]:
    """The index and header of a section of an ELF file."""
    with open(path, "rb") as handle:
        sections = fatbin.read_sections(handle, path.stat().st_size, str(path))
    assert sections is not None
    return next((i, s) for i, s in enumerate(sections) if s.name == name)


def test_truncated_files_give_a_clear_error(tmp_path: Path) -> None:
    data = (FIXTURES / "sm86_sm90.so").read_bytes()
    target = tmp_path / "cut.so"
    target.write_bytes(data[:40])
    with pytest.raises(fatbin.FatbinError, match="truncated ELF header"):
        fatbin.read_archs(target)
    target.write_bytes(data[:200])
    with pytest.raises(fatbin.FatbinError, match="truncated: section headers end at byte"):
        fatbin.read_archs(target)


def test_nv_fatbin_past_the_end_of_the_file_is_truncated(tmp_path: Path) -> None:
    # What a half-copied library looks like once its section headers are read.
    target = tmp_path / "half.so"
    shutil.copy(FIXTURES / "sm86_sm90.so", target)
    index, _ = section(target, ".nv_fatbin")
    data = bytearray(target.read_bytes())
    shoff, shentsize = (
        struct.unpack_from("<Q", data, 0x28)[0],
        struct.unpack_from("<H", data, 0x3A)[0],
    )
    struct.pack_into("<Q", data, shoff + index * shentsize + 32, len(data))  # sh_size
    target.write_bytes(bytes(data))
    with pytest.raises(fatbin.FatbinError, match=r"truncated: \.nv_fatbin ends at byte"):
        fatbin.read_archs(target)


def test_corrupt_container_in_nv_fatbin_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "corrupt.so"
    shutil.copy(FIXTURES / "sm86.so", target)
    _, nv = section(target, ".nv_fatbin")
    data = bytearray(target.read_bytes())
    first_entry = nv.offset + fatbin.CONTAINER.size
    struct.pack_into("<H", data, first_entry, 7)  # an entry kind that does not exist
    target.write_bytes(bytes(data))
    with pytest.raises(fatbin.FatbinError, match=r"\.nv_fatbin container at byte .* kind 7"):
        fatbin.read_archs(target)
