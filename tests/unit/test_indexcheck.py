"""Which index a build takes torch from, and the judgement of what the index said."""

import pytest

from torchkiln import indexcheck, settings

PYTHON = "https://python-index.example/simple"


def values(**given):
    return settings.resolve(given)


@pytest.mark.parametrize(
    ("given", "setting", "ends", "required"),
    [
        ({"CUDA_FROM": "none", "BUILD_MODE": "wheels"}, "TORCH_INDEX_URL", "/cpu", True),
        ({"CUDA_FROM": "image", "BUILD_MODE": "wheels"}, "TORCH_INDEX_URL", "/cu130", True),
        ({"CUDA_FROM": "pypi", "BUILD_MODE": "torch-wheel"}, "PIP_INDEX_URL", "/simple", True),
        ({"CUDA_FROM": "image", "CCA": "8.6"}, "TORCH_INDEX_URL", "/cu130", False),
        (
            {"TORCH_INDEX_URL": "https://mirror.example/whl/cpu", "BUILD_MODE": "wheels"},
            "TORCH_INDEX_URL",
            "mirror.example/whl/cpu",
            True,
        ),
    ],
    ids=["cpu", "cuda-image", "cuda-pypi", "source", "set"],
)
def test_the_torch_index_is_the_one_the_build_scripts_pick(given, setting, ends, required):
    index = indexcheck.torch_index(values(**given), PYTHON)
    assert index.setting == setting and index.url.endswith(ends) and index.required is required


def test_wheels_are_read_for_this_python_and_machine():
    files = {
        "torch-2.14.1%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl": 0,
        "torch-2.14.1-cp312-cp312-manylinux_2_28_x86_64.whl": 5,
        "torch-2.13.0-cp311-cp311-manylinux_2_28_aarch64.whl": 7,
        "torchvision-0.29.1-cp311-cp311-manylinux_2_28_x86_64.whl": 9,
    }
    found = indexcheck.wheel_versions("torch", files, "3.11", "x86_64")
    assert found == {"2.14.1+cpu": 0}
    assert indexcheck.has_version(found, "2.14.1") == "2.14.1+cpu"
    assert indexcheck.has_version(found, "2.14") == ""


def test_a_pure_python_wheel_counts_as_pip_would_take_it():
    files = {
        "torchvision-0.28.0-py3-none-any.whl": 3,
        "torchvision-0.27.0-py2.py3-none-any.whl": 4,
        "torchvision-0.26.0-cp310-cp310-linux_x86_64.whl": 5,
        "torchvision-0.25.0-py3-none-win_amd64.whl": 6,
    }
    found = indexcheck.wheel_versions("torchvision", files, "3.11", "x86_64")
    assert found == {"0.28.0": 3, "0.27.0": 4}


WANTED = {"torch": "2.14.1", "torchvision": "0.29.1"}
HAS_ALL = indexcheck.Answer(versions={"torch": {"2.14.1": 6e8}, "torchvision": {"0.29.1": 0}})


@pytest.mark.parametrize(
    ("answer", "python_answer", "status", "words"),
    [
        (HAS_ALL, HAS_ALL, "ok", ["has torch 2.14.1, torchvision 0.29.1"]),
        (
            indexcheck.Answer("does not resolve: x has no address from here", "resolve"),
            HAS_ALL,
            "error",
            ["does not resolve", f"TORCH_INDEX_URL={PYTHON}", "0.6 GB wheel"],
        ),
        (
            indexcheck.Answer(versions={"torch": {"2.14.1": 0}, "torchvision": {"0.28.0": 0}}),
            HAS_ALL,
            "error",
            ["torchvision==0.29.1", f"TORCH_INDEX_URL={PYTHON}"],
        ),
        (
            indexcheck.Answer("fails TLS verification (x)", "tls"),
            indexcheck.Answer(versions={"torch": {"2.13.0": 0}}),
            "error",
            ["TLS", "set TORCH_INDEX_URL to an index", "--wheelhouse"],
        ),
        (
            indexcheck.Answer("does not answer from here (timed out)", "unreachable"),
            indexcheck.Answer("does not answer from here (timed out)", "unreachable"),
            "warn",
            ["does not answer"],
        ),
    ],
    ids=["ok", "no-name-python-index-has-it", "lacks-vision", "tls-nothing-fits", "offline"],
)
def test_a_failing_torch_index_names_the_setting_and_a_value_that_works(
    answer, python_answer, status, words
):
    index = indexcheck.TorchIndex("https://torch.example/whl/cpu", "TORCH_INDEX_URL", "x", True)
    row = indexcheck.judge(index, answer, PYTHON, python_answer, WANTED, "3.11")
    assert row.status == status, row
    for word in words:
        assert word in row.detail + row.fix, row


@pytest.mark.parametrize(
    ("url", "token", "expected"),
    [
        ("https://index.example/simple", "t0k", "https://__token__:t0k@index.example/simple"),
        ("https://me@index.example/simple", "t0k", "https://me:t0k@index.example/simple"),
        ("https://me:pw@index.example/simple", "", "https://me:pw@index.example/simple"),
        ("https://index.example/simple", "", "https://index.example/simple"),
    ],
    ids=["token", "user-and-token", "password-in-url", "none"],
)
def test_the_python_index_is_asked_with_the_builds_credentials(url, token, expected):
    given = {"PIP_INDEX_URL": url, "PIP_INDEX_TOKEN": token}
    assert indexcheck.with_token(url, given) == expected
    assert indexcheck.with_token("https://other.example/whl", given) == "https://other.example/whl"


def test_an_index_that_refuses_the_credentials_here_is_no_proof():
    index = indexcheck.TorchIndex(PYTHON, "PIP_INDEX_URL", "CUDA_FROM=pypi", True)
    refused = indexcheck.Answer("answers HTTP 401 for torch's page", "http")
    row = indexcheck.judge(index, refused, PYTHON, refused, WANTED, "3.11")
    assert row.status == "warn" and "HTTP 401" in row.detail


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            {"CUDA_FROM": "pypi", "BUILD_MODE": "torch-wheel", "PIP_INDEX_URL": PYTHON},
            [f"https://__token__:t0k@{PYTHON.removeprefix('https://')}"],
        ),
        (
            {"TORCH_INDEX_URL": "https://mirror.example/whl/cpu", "PIP_INDEX_URL": PYTHON},
            ["https://mirror.example/whl/cpu", f"https://__token__:t0k@{PYTHON[8:]}"],
        ),
    ],
    ids=["one-index", "two-indexes"],
)
def test_each_index_is_probed_once_the_python_index_with_its_token(monkeypatch, given, expected):
    asked = []

    def probe(url, *args):
        asked.append(url)
        return HAS_ALL

    monkeypatch.setattr(indexcheck, "probe", probe)
    chosen = values(**given, PIP_INDEX_TOKEN="t0k", PYTORCH_VERSION="2.14.1")
    rows = indexcheck.index_rows(chosen, "", PYTHON)
    assert sorted(asked) == sorted(expected)
    assert [row.status for row in rows] == ["ok"]
