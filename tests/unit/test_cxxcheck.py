"""The C++ standard an extension pins against the one torch's headers require."""

import io
import tarfile
import zipfile

import pytest

from torchkiln import cxxcheck

SETUP_17 = "CUDAExtension('k', ['k.cu'], extra_compile_args={'cxx': ['-O3', '-std=c++17'],\n"
SETUP_17 += "    'nvcc': ['-O3', '-std=c++17', '--use_fast_math']})\n"


@pytest.mark.parametrize(
    ("texts", "standard"),
    [
        ([SETUP_17], 17),
        (["flags = ['/std:c++17']"], 17),
        (["a = '-std=c++20'", "b = '-std=c++14'"], 14),
        (["'-std=c++98'", "'-std=c++11'"], -2),
        (["set(CMAKE_CXX_STANDARD 17)  # no flag"], None),
        (["CUDAExtension('k', ['k.cu'])"], None),
    ],
    ids=["setup-17", "msvc", "lowest-wins", "98-is-oldest", "cmake-variable", "none"],
)
def test_the_standard_a_build_pins(texts, standard):
    assert cxxcheck.asked_standard(texts) == standard


@pytest.mark.parametrize(
    ("version", "standard"), [("2.13.0", 17), ("2.13.1", 17), ("2.14.1", 20), ("2.15.0", 20)]
)
def test_torch_headers_standard(version, standard):
    assert cxxcheck.torch_standard(version) == standard


def test_the_newest_torch_that_takes_a_standard_is_chosen_from_what_the_index_has():
    listed = ["2.14.1+cpu", "2.13.1+cpu", "2.13.0", "2.12.0", "2.13.2rc1", "1.0.0"]
    assert cxxcheck.newest_torch_for(17, listed) == "2.13.1"
    assert cxxcheck.newest_torch_for(20, listed) == "2.14.1"
    assert cxxcheck.newest_torch_for(17, ["2.14.1"]) == ""


def archive(kind: str, files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as made:
            for name, text in files.items():
                made.writestr(name, text)
        return buffer.getvalue()
    with tarfile.open(fileobj=buffer, mode="w:gz") as made:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            made.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_the_build_files_are_read_from_the_top_of_a_source_distribution(kind):
    data = archive(
        kind,
        {
            "ext-1.0/setup.py": SETUP_17,
            "ext-1.0/third_party/lib/setup.py": "'-std=c++11'",  # not the extension's own
            "ext-1.0/README.md": "-std=c++03 in prose",
        },
    )
    texts = cxxcheck.build_texts_of_archive(f"ext-1.0.{kind}", data)
    assert cxxcheck.asked_standard(texts) == 17


@pytest.mark.parametrize(
    ("release", "torch", "words"),
    [
        ("ext==2.0", "", ["--extension ext==2.0, a release that builds with C++20"]),
        ("", "2.13.0", ["--torch 2.13.0, the newest torch on https://i.example/simple"]),
        ("", "", ["choose a torch older than 2.14", "made for C++20"]),
    ],
    ids=["a-release-fits", "a-torch-fits", "nothing-found"],
)
def test_the_advice_names_a_change_that_exists(release, torch, words):
    detail, fix = cxxcheck.problem(
        "ext==1.0", 17, "2.14.1", release, torch, "https://i.example/simple"
    )
    assert "-std=c++17" in detail and "torch 2.14.1's headers require C++20" in detail
    for word in words:
        assert word in fix, fix


BY_TORCH = """
torch_version = tuple(int(x) for x in torch.__version__.split(".")[:2])
std = "-std=c++17" if torch_version < (2, 14) else "-std=c++20"
setup(ext_modules=[CUDAExtension("k", ["k.cu"], extra_compile_args={"cxx": [std]})])
"""
BLOCK = """
if torch_version >= (2, 14):
    flags = ["-O3"]
else:
    flags = ["-O3",
             "-std=c++17"]
"""
WINDOWS_ONLY = """
if sys.platform == "win32":
    args = ["/std:c++17"]
"""
CMAKE_IF = """
if(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 12)
  set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} -std=c++17")
endif()
"""
MAIN_GUARD = """
if __name__ == "__main__":
    setup(ext_modules=[CUDAExtension("k", ["k.cu"],
          extra_compile_args={"cxx": ["-std=c++17"]})])
"""
# mamba-ssm 2.3.2.post1's setup.py: both branches of a switch on something else pin C++17.
BRANCHES_ALIKE = """
if not SKIP_CUDA_BUILD:
    if HIP_BUILD:
        extra_compile_args = {"cxx": ["-O3", "-std=c++17"]}
    else:
        extra_compile_args = {
            "cxx": ["-O3", "-std=c++17"],
        }
"""
SIBLING_IF = """
if (os.name == "nt"):
    extra = []
flags = ["-std=c++17"]
"""


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([SETUP_17], (17, True)),
        ([MAIN_GUARD], (17, True)),
        ([SIBLING_IF], (17, True)),
        ([BRANCHES_ALIKE], (17, True)),
        ([BY_TORCH], (17, False)),
        (["a = '-std=c++20'", "b = '-std=c++14'"], (14, False)),
        ([BLOCK], (17, False)),
        ([WINDOWS_ONLY], (17, False)),
        ([CMAKE_IF], (17, False)),
        (["CUDAExtension('k', ['k.cu'])"], (None, False)),
    ],
    ids=[
        "one",
        "main-guard",
        "sibling-if",
        "branches-alike",
        "by-torch",
        "two-files",
        "block",
        "win",
        "cmake",
        "no",
    ],
)
def test_a_standard_is_pinned_only_when_named_alone_and_unconditionally(texts, expected):
    assert cxxcheck.pinned_standard(texts) == expected


def gather_folder(monkeypatch, folder):
    """The check of one local extension; the index lists no torch (no network asked)."""
    from torchkiln import indexcheck, settings

    monkeypatch.setattr(indexcheck, "probe", lambda *args: indexcheck.Answer())
    values = settings.resolve({"PYTORCH_VERSION": "2.14.1"})
    return cxxcheck.gather([], {"ext": str(folder)}, values, "", "https://i.example/simple")


def test_a_build_that_picks_the_standard_by_torch_version_is_warned_not_refused(
    monkeypatch, tmp_path
):
    (tmp_path / "setup.py").write_text(BY_TORCH)
    rows = gather_folder(monkeypatch, tmp_path)
    assert [row.status for row in rows] == ["warn"]
    assert "names -std=c++17 under a condition" in rows[0].detail
    assert "the compile fails if the build picks c++17" in rows[0].detail


def test_a_single_unconditional_older_standard_is_still_refused(monkeypatch, tmp_path):
    (tmp_path / "setup.py").write_text(SETUP_17)
    rows = gather_folder(monkeypatch, tmp_path)
    assert [row.status for row in rows] == ["error"]
    assert "compiles with -std=c++17" in rows[0].detail
