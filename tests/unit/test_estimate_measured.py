"""The estimate against measured builds: each figure here was measured (where is said beside
it), and the estimate of the same build must come within +-30 % of it (torchkiln issue 28)."""

from __future__ import annotations

import re

import pytest

from torchkiln import estimate, extcompile, settings

GB = 1024**3
GOAL = 0.30


def seconds_range(text: str) -> tuple[float, float]:
    """The 'A to B' (or 'about A') of an estimate, in seconds."""

    def seconds(part: str) -> float:
        found = {unit: float(number) for number, unit in re.findall(r"(\d+) (h|min|s)\b", part)}
        return found.get("h", 0) * 3600 + found.get("min", 0) * 60 + found.get("s", 0)

    match = re.search(r" takes (?:about (.+?)|(.+?) to (.+?))(?: the first time| \(|;)", text)
    assert match, text
    return (
        (seconds(match[1]), seconds(match[1]))
        if match[1]
        else (seconds(match[2]), seconds(match[3]))
    )


def assert_within_goal(text: str, measured: float) -> None:
    """The middle of the range said is within +-30 % of the measured time."""
    low, high = seconds_range(text)
    assert abs((low + high) / 2 / measured - 1) <= GOAL, (text, measured)


def test_the_quoted_wheels_build_with_mamba_ssm_on_2_cores() -> None:
    # Issue 28: BUILD_MODE=wheels, CUDA torch, mamba-ssm 2.3.2.post1 (9 CUDA sources) for 8.6 on
    # 2 cores: 9 min 51 s, 377 s of it the extension. The old estimate said 23 min to 1 h 10 min.
    values = settings.resolve(
        {"BUILD_MODE": "wheels", "CCA": "8.6", "EXTENSIONS": "mamba-ssm==2.3.2.post1"}
    )
    read = [extcompile.ExtensionSources("mamba-ssm", 9)]
    text = estimate.estimate(values, 2, 24 * GB, extension_sources=read)
    assert_within_goal(text, 9 * 60 + 51)
    assert "mamba-ssm: 9 CUDA sources x 1 arch" in text
    assert extcompile.extension_seconds(9, 1, 2) == pytest.approx(377, rel=GOAL)


@pytest.mark.parametrize(
    ("sources", "archs", "jobs", "measured"),
    [
        (9, 1, 2, 377),  # mamba-ssm 2.3.2.post1 for 8.6, 2 cores (issue 28)
        (3, 1, 16, 223),  # causal-conv1d 1.7.0 for 9.0, 16 jobs (docs/gpu-results.md run 9)
        (1, 1, 16, 104),  # torchsort 0.1.10 for 9.0, 16 jobs (docs/gpu-results.md run 7)
    ],
    ids=["mamba-2-cores", "causal-conv1d-16-cores", "torchsort-16-cores"],
)
def test_an_extension_is_its_cuda_sources_times_its_archs(sources, archs, jobs, measured) -> None:
    assert extcompile.extension_seconds(sources, archs, jobs) == pytest.approx(measured, rel=GOAL)


def test_the_16_core_extension_build_of_gpu_results_within_the_goal() -> None:
    # causal-conv1d 1.7.0 (3 CUDA sources) for 9.0, MAX_JOBS=16: 223 s (docs/gpu-results.md run
    # 9); in BUILD_MODE=wheels the image's own steps come on top, so compare the compile alone.
    values = settings.resolve({"BUILD_MODE": "wheels", "CCA": "9.0", "MAX_JOBS": "16"})
    read = [extcompile.ExtensionSources("causal-conv1d", 3)]
    low, high, said = extcompile.extensions_seconds(values, read, 16)
    assert said == ["causal-conv1d: 3 CUDA sources x 1 arch"]
    assert low == high == pytest.approx(223, rel=GOAL)
    text = estimate.estimate(values, 16, 125 * GB, extension_sources=read)
    image = estimate.image_seconds(values, compiles=True)
    assert_within_goal(text, 223 + image)


def test_more_sources_or_more_archs_cost_more_and_many_cores_wait_for_the_longest() -> None:
    one = extcompile.extension_seconds(9, 1, 2)
    assert (
        extcompile.extension_seconds(9, 2, 2) > one and extcompile.extension_seconds(18, 1, 2) > one
    )
    # Few sources on many cores: the longest source bounds it, not the cores.
    assert extcompile.extension_seconds(3, 1, 16) == extcompile.extension_seconds(3, 1, 64)
    # Nine archs of one source, five at a time (nvcc --threads): two rounds.
    assert extcompile.extension_seconds(3, 9, 16) > 1.9 * (
        extcompile.extension_seconds(3, 1, 16) - 30
    )


@pytest.mark.parametrize(
    ("given", "own", "archs"),
    [
        ({"CCA": "8.6"}, 0, 1),
        ({"CCA": "8.6;9.0+PTX"}, 9, 2),  # cca: the CCA's archs, whatever the project names
        ({"CCA": "8.6", "EXTENSION_ARCHS": "as-is"}, 9, 9),  # as-is: the project's own
        ({"CCA": "8.6;8.9", "EXTENSION_ARCHS": "as-is"}, 0, 2),  # none named: the CCA's
        ({"CCA": "8.6", "CUDA_FROM": "none", "BUILD_MODE": "wheels"}, 9, 0),  # no CUDA code
    ],
)
def test_the_archs_compiled_are_those_the_policy_compiles(given, own, archs) -> None:
    assert extcompile.archs_compiled(settings.resolve(given), own) == archs


def test_an_extension_whose_sources_were_not_read_gets_a_range_and_says_so() -> None:
    values = settings.resolve(
        {"BUILD_MODE": "wheels", "CCA": "8.6", "EXTENSIONS": "causal-conv1d==1.5.2"}
    )
    text = estimate.estimate(values, 2, 24 * GB)
    assert "causal-conv1d: CUDA sources not read, 3-60 taken" in text
    low, high = seconds_range(text)
    assert low < 10 * 60 and high > 40 * 60


def test_the_cpu_wheels_fixture_build_within_the_goal() -> None:
    # BUILD_MODE=wheels with the CPU torch 2.13.0 from a local wheelhouse (the integration tests'
    # fixture), a first build on a 2-core machine: scripts/measure_estimate.py --modes wheels,
    # 75 s (2026-12-06; 194-236 s in runs beside four other builds on the same 2 cores), 53 s
    # in the run of all three modes (2026-12-07).
    values = settings.resolve({"BUILD_MODE": "wheels", "CUDA_FROM": "none", "MAX_JOBS": "2"})
    for measured in (75, 53):
        assert_within_goal(estimate.estimate(values, 2, 24 * GB), measured)


def sdist(files: dict[str, str]) -> bytes:
    """A .tar.gz source distribution holding these files under one top folder."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"demo-1.0/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def test_an_sdist_says_its_cuda_sources_and_the_archs_its_setup_py_names() -> None:
    from torchkiln import extsources

    setup = 'cc_flag = ["-gencode", "arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90a"]'
    files = {"setup.py": setup, "csrc/a.cpp": "", "csrc/b.cuh": ""}
    files |= {f"csrc/k{n}.cu": "" for n in range(9)}
    read = extsources.of_archive("demo", "demo-1.0.tar.gz", sdist(files))
    assert read == extcompile.ExtensionSources("demo", 9, 2)


def test_a_local_folder_and_a_wheelhouse_are_read_too(tmp_path) -> None:
    from pathlib import Path

    from torchkiln import extsources

    fixture = Path(__file__).parents[1] / "fixtures" / "extension"
    folder = extsources.of_folder("kiln-gencode-ops", fixture)
    assert (folder.cuda_sources, folder.own_archs) == (2, 2)  # its setup.py: sm_75, sm_80
    (tmp_path / "demo-1.0.tar.gz").write_bytes(sdist({"setup.py": "", "x.cu": ""}))
    found = extsources.gather(["Demo==1.0", "other==2.0"], {}, "", "", str(tmp_path))
    assert found == [extcompile.ExtensionSources("Demo", 1, 0)]


def test_torch_wheel_with_a_torchvision_folder_counts_its_sources() -> None:
    values = settings.resolve({"BUILD_MODE": "torch-wheel", "CCA": "8.6"})
    published = seconds_range(estimate.estimate(values, 2, 24 * GB))
    two = extcompile.ExtensionSources("torchvision", 2)
    own = seconds_range(estimate.estimate(values, 2, 24 * GB, vision=two))
    assert own[1] < published[0], "two kernels are not torchvision's hour"
    compile_s = extcompile.extension_seconds(2, 1, 2)
    image = estimate.image_seconds(values, compiles=True)
    assert own == pytest.approx(((image + compile_s) * 0.85, (image + compile_s) * 1.2), abs=60)


def test_the_torch_wheel_fixture_build_within_the_goal() -> None:
    # BUILD_MODE=torch-wheel as the CUDA tests build it: the official CUDA torch and NVIDIA's
    # toolkit wheels from the index (CUDA_FROM=pypi), the fixture's torchvision folder (2 CUDA
    # sources) and torchsort 0.1.10 (1) for 8.6 on 2 cores, a first build with an empty compile
    # cache: scripts/measure_estimate.py --modes torch-wheel, 348 s, then 350 s, and 396 s in the
    # run of all three modes (2026-12-07). The estimate first said 8 min to 12 min (0.58): it
    # added the two compiles, which run at once.
    values = settings.resolve(
        {"BUILD_MODE": "torch-wheel", "CCA": "8.6", "CUDA_FROM": "pypi",
         "EXTENSIONS": "torchsort==0.1.10"}
    )  # fmt: skip
    read = [extcompile.ExtensionSources("torchsort", 1)]
    vision = extcompile.ExtensionSources("torchvision", 2)
    text = estimate.estimate(values, 2, 24 * GB, extension_sources=read, vision=vision)
    for measured in (348, 350, 396):
        assert_within_goal(text, measured)
    # Each step had 1 of the 2 jobs: vision-build took 176 s, extensions-build 114 s, at once.
    assert extcompile.extension_seconds(2, 1, 1) == pytest.approx(176, rel=GOAL)
    assert extcompile.extension_seconds(1, 1, 1) == pytest.approx(114, rel=GOAL)


def against_torch(values, jobs, read, vision) -> tuple[float, float, list[str]]:
    vision_s, extensions_s, said = estimate.against_torch_parts(values, jobs, read, 0, vision)
    return (*estimate.longest(vision_s, extensions_s), said)


def test_the_steps_built_against_torch_share_the_jobs_and_the_longest_sets_the_time() -> None:
    values = settings.resolve(
        {"BUILD_MODE": "torch-wheel", "CCA": "8.6", "EXTENSIONS": "torchsort==0.1.10"}
    )
    vision = extcompile.ExtensionSources("torchvision", 2)
    read = [extcompile.ExtensionSources("torchsort", 1)]
    low, high, said = against_torch(values, 8, read, vision)
    assert said == ["torchsort: 1 CUDA sources x 1 arch"]
    # 4 jobs each; torchvision's two sources are the longer step.
    assert low == high == extcompile.extension_seconds(2, 1, 4)
    assert low < extcompile.extension_seconds(2, 1, 8) + extcompile.extension_seconds(1, 1, 8)
    # Alone (no extension), torchvision has every job; torchaudio asked for takes a share too.
    alone = against_torch({**values, "EXTENSIONS": ""}, 8, [], vision)
    assert alone[:2] == (extcompile.extension_seconds(2, 1, 8),) * 2
    audio = against_torch(
        {**values, "EXTENSIONS": "", "TORCHAUDIO_VERSION": "2.9.1"}, 8, [], vision
    )
    assert audio[:2] == (extcompile.extension_seconds(2, 1, 4),) * 2
    # Official wheels compile no torchvision: the extensions have every job.
    wheels = against_torch({**values, "BUILD_MODE": "wheels"}, 8, read, None)
    assert wheels[:2] == (extcompile.extension_seconds(1, 1, 8),) * 2
