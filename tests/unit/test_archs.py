"""The one CCA grammar and the arch rules, shared by the host tasks and the in-image checks."""

from __future__ import annotations

import itertools
import random

import pytest

from torchkiln import buildplan, gpu, settings
from torchkiln.errors import UserError
from torchkiln.inimage import archs


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("8.6", "8.6"),
        ("8.6;9.0", "8.6;9.0"),
        ("8.6 9.0", "8.6;9.0"),
        ("8.6,9.0", "8.6;9.0"),
        ("8.6, 9.0", "8.6;9.0"),
        ("9.0;8.6", "8.6;9.0"),
        ("8.6;9.0;", "8.6;9.0"),
        (";8.6;;9.0 ;", "8.6;9.0"),
        ("  8.6\t9.0\n", "8.6;9.0"),
        ("9.0a", "9.0a"),
        ("10.0f", "10.0f"),
        ("12.0f;12.0a", "12.0a;12.0f"),
        ("12.0+PTX", "12.0+PTX"),
        ("12.0+ptx", "12.0+PTX"),
        ("8.6;8.6", "8.6"),
        ("8.6;8.6+PTX", "8.6+PTX"),
        ("9.0A", "9.0a"),
    ],
)
def test_accepted_forms_normalise_to_one_spelling(text: str, normal: str) -> None:
    assert archs.normalize_cca(text) == normal
    assert archs.normalize_cca(normal) == normal  # the normal form is a fixed point


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("86", "'86'"),
        ("sm_86", "'sm_86'"),
        ("8.6x", "'8.6x'"),
        ("8.6.1", "'8.6.1'"),
        ("9.0b", "'9.0b'"),
        ("", "empty"),
        (" ; ", "empty"),
        ("8.6a", "'8.6a'"),
        ("9.0f", "'9.0f'"),
        ("compute_90", "'compute_90'"),
    ],
)
def test_refused_forms_name_the_input_and_the_fix(text: str, shown: str) -> None:
    with pytest.raises(archs.CCAError) as caught:
        archs.parse_cca(text)
    message = str(caught.value)
    assert shown in message
    assert "8.6" in message or "9.0" in message or "10.0" in message  # the right form is named
    assert "\n" not in message
    # The host shows the same refusal as a user error, and the settings model refuses it too.
    with pytest.raises(UserError, match=shown.strip("'")):
        gpu.parse_cca(text)
    if text.strip(" ;"):
        with pytest.raises(UserError):
            settings.resolve({"CCA": text})


@pytest.mark.parametrize(
    ("cca", "torch_list", "cmake", "magma", "binaries"),
    [
        ("8.6", "8.6", "86-real", "860", ["sm_86"]),
        ("8.6;9.0", "8.6;9.0", "86-real;90-real", "860", ["sm_86", "sm_90"]),
        ("9.0+PTX", "9.0+PTX", "90", "900", ["sm_90", "compute_90"]),
        ("9.0a", "9.0a", "90a-real", "900", ["sm_90a"]),
        ("10.0f", "10.0f", "100f-real", "1000", ["sm_100f"]),
        (
            "8.6 12.0+PTX",
            "8.6;12.0+PTX",
            "86-real;120",
            "860",
            ["sm_86", "sm_120", "compute_120"],
        ),
    ],
)
def test_one_parser_feeds_every_consumer(cca, torch_list, cmake, magma, binaries) -> None:
    assert gpu.cca_build_args(cca) == {
        "TORCH_CUDA_ARCH_LIST": torch_list,
        "CUDA_ARCHITECTURES": cmake,
        "MAGMA_CUDA_ARCH_MIN": magma,
    }
    assert archs.expected_binaries(archs.parse_cca(cca)) == binaries


def _spellings(seed: int) -> list[str]:
    """Random spellings of CCA lists: separators, spaces, order, case, repeats, trailing ';'."""
    rng = random.Random(seed)
    items = ["7.5", "8.0", "8.6", "8.9", "9.0", "9.0a", "10.0", "10.0f", "12.0", "12.0a"]
    found = []
    for _ in range(300):
        chosen = rng.sample(items, rng.randint(1, 4))
        chosen += rng.sample(chosen, rng.randint(0, len(chosen)))  # repeats
        chosen = [f"{item}{rng.choice(['', '+PTX', '+ptx'])}" for item in chosen]
        text = ""
        for item in chosen:
            text += item + rng.choice([";", ",", " ", " ; ", ", ", "\t"])
        found.append(rng.choice(["", " "]) + text)
    return found


@pytest.mark.parametrize("text", _spellings(7))
def test_what_the_compile_sees_equals_the_normalised_value(text: str) -> None:
    """Property: for any accepted spelling, .env, the build args and labels get the normal form,
    and TORCH_CUDA_ARCH_LIST is exactly that form (no empty item, no stray separator)."""
    values = settings.resolve({"CCA": text})
    normal = archs.normalize_cca(text)
    assert values["CCA"] == normal
    args = buildplan.build_arg_values("train", values)
    assert args["CCA"] == normal
    assert args["TORCH_CUDA_ARCH_LIST"] == normal
    assert all(item for item in args["TORCH_CUDA_ARCH_LIST"].split(";"))
    assert set(args["CUDA_ARCHITECTURES"].split(";")) == {
        a.number if a.ptx else f"{a.number}-real" for a in archs.parse_cca(text)
    }


@pytest.mark.parametrize(
    ("cca", "cuda", "ok"),
    [
        ("3.5", "13.0.2", False),
        ("3.5", "11.8.0", True),
        ("7.0", "12.6.3", True),
        ("10.0", "12.6.3", False),
        ("10.0", "12.8.1", True),
        ("12.0+PTX", "12.8.0", True),
        ("9.0a", "11.8.0", False),
        ("9.0a", "12.0.1", True),
        ("10.0f", "12.8.1", False),
        ("10.0f", "12.9.1", True),
        ("10.0f", "13.0.2", True),
        ("10.1", "13.0.0", False),
        ("8.6;9.0", "13.0.2", True),
    ],
)
def test_cca_against_cuda(cca: str, cuda: str, ok: bool) -> None:
    if ok:
        assert gpu.check_cca_for_cuda(cca, cuda)
    else:
        with pytest.raises(UserError, match="CUDA"):
            gpu.check_cca_for_cuda(cca, cuda)


def test_fix_points_the_right_way() -> None:
    with pytest.raises(UserError, match=r"12\.8 or newer"):
        gpu.check_cca_for_cuda("10.0", "12.4.1")
    with pytest.raises(UserError, match=r"CUDA 11\.x"):
        gpu.check_cca_for_cuda("3.5", "13.0.2")


def test_cuda13_has_no_arch_below_turing() -> None:
    supported = archs.supported_archs("13.0.2")
    assert supported[0] == "7.5"
    assert {"7.0", "6.1", "5.2", "3.5"}.isdisjoint(supported)
    assert {"9.0", "10.0", "11.0", "12.0", "12.1"} <= set(supported)


# --- which code runs where -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "binaries", "expected"),
    [
        ((9, 0), ["sm_80", "sm_90"], "SASS sm_90"),
        ((9, 0), ["sm_90a"], "SASS sm_90a"),
        ((12, 0), ["sm_90", "sm_120"], "SASS sm_120"),
        ((8, 6), ["sm_80"], "SASS sm_80 (binary-compatible with 8.6)"),
        ((10, 3), ["sm_100f"], "SASS sm_100f (binary-compatible with 10.3)"),
        ((12, 1), ["sm_120f"], "SASS sm_120f (binary-compatible with 12.1)"),
        ((9, 0), ["sm_80", "compute_80"], "PTX JIT from compute_80"),
        ((12, 0), ["sm_90", "compute_90", "compute_75"], "PTX JIT from compute_90"),
        ((9, 0), ["compute_90a"], "PTX JIT from compute_90a"),
        ((10, 3), ["compute_100f"], "PTX JIT from compute_100f"),
    ],
)
def test_covers_says_how(cap, binaries, expected) -> None:
    assert archs.covers(cap, binaries) == expected


@pytest.mark.parametrize(
    ("cap", "binaries"),
    [
        ((9, 0), []),
        ((12, 0), ["sm_90a"]),  # 'a' code runs on exactly one chip
        ((10, 3), ["sm_100a"]),
        ((10, 0), ["sm_90a", "compute_90a"]),  # 'a' PTX does not JIT forward either
        ((12, 0), ["sm_100f", "compute_100f"]),  # 'f' stays in its family
        ((8, 0), ["sm_86"]),  # newer minor's SASS does not run on an older chip
        ((8, 0), ["compute_86"]),  # nor does newer PTX
        ((12, 0), ["sm_100", "sm_90"]),  # SASS never crosses a major
        ((7, 5), ["sm_80", "sm_90", "compute_90"]),
    ],
)
def test_covers_refuses(cap, binaries) -> None:
    assert archs.covers(cap, binaries) is None


def test_a_build_for_a_cca_covers_each_of_its_gpus() -> None:
    for combo in itertools.combinations(["8.6", "9.0", "9.0a", "10.0f", "12.0+PTX"], 2):
        built = archs.expected_binaries(archs.parse_cca(";".join(combo)))
        for item in archs.parse_cca(";".join(combo)):
            assert archs.covers((item.major, item.minor), built), (combo, item)


# --- drivers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "cuda", "too_old"),
    [
        ("570.86.15", "13.0", True),
        ("580.65.06", "13.0", False),
        ("580.159.04", "13.0", False),
        ("525.60.13", "12.8", False),
        ("520.61.05", "12.1", True),
        ("450.80.02", "11.8", False),
        ("418.126.02", "11.0", True),
        ("535.104.05", "12", False),
        ("400.00", "14.0", False),  # a CUDA major not in the table: no verdict, not "too old"
    ],
)
def test_driver_too_old(driver: str, cuda: str, too_old: bool) -> None:
    assert archs.driver_too_old(driver, cuda) is too_old
    if cuda != "14.0":
        assert gpu.driver_supports_cuda(driver, cuda) is not too_old
