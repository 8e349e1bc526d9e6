"""The base images a build starts from: are they here or pullable, what replaces a missing one,
and the Python each has (from the image, else from its distro).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torchkiln import settings
from torchkiln.checkrows import Row, append_to_env
from torchkiln.engine import EngineFacts
from torchkiln.hostfacts import ImageFacts

# The settings that name each service's base images.
BASE_IMAGE_SETTINGS = {
    "train": ("BUILD_IMAGE", "TRAIN_IMAGE"),
    "full": ("BUILD_IMAGE", "TRAIN_IMAGE"),
    "ngc": ("NGC_IMAGE",),
}


def base_images(service: str, values: Mapping[str, str]) -> dict[str, str]:
    """The base images a service's build pulls, each with the setting that names it."""
    found: dict[str, str] = {}
    for name in BASE_IMAGE_SETTINGS[service]:
        found.setdefault(values[name], name)
    return found


def check_base_images(
    service: str,
    values: Mapping[str, str],
    problems: Mapping[str, str],
    local: Sequence[ImageFacts] = (),
    gpu_here: bool = True,
) -> Row:
    """Judge whether each base image is here or resolvable; for a missing one, say what
    replaces it as lines that work here: an apt-based image that is here, with its Python,
    the CUDA route and the BUILD_MODE (the CPU route too where no GPU reaches containers)."""
    images = base_images(service, values)
    missing = [(image, problems[image]) for image in images if problems.get(image)]
    if not missing:
        return Row("base images", "ok", ", ".join(images))
    image, reason = missing[0]
    setting = images[image]
    routes = [
        f"set {setting} to a copy you can reach (a registry mirror, or docker load an image "
        f"saved on another machine)"
    ]
    usable = apt_images(local) if service != "ngc" else []
    if usable:
        facts, python, distro = usable[0]
        # Official CUDA wheels need no CCA; compiling does, and with no GPU here none is found.
        mode = values.get("BUILD_MODE", "source")
        if mode != "wheels" and not values.get("CCA"):
            mode = "wheels"
        here = [f"BUILD_IMAGE={facts.image}", f"TRAIN_IMAGE={facts.image}"]
        here.append(f"PYTHON_VERSION={python}")
        pypi = append_to_env(["CUDA_FROM=pypi", f"BUILD_MODE={mode}", *here])
        routes.append(
            f"or build on {facts.image} ({distro}, Python {python}), which is here, with CUDA "
            f"from the Python index: {pypi}"
        )
        if not gpu_here:
            routes.append(
                f"or, for the CPU only (torch from PyTorch's CPU index, or --wheelhouse DIR): "
                f"{append_to_env(['CUDA_FROM=none', 'BUILD_MODE=wheels', *here])}"
            )
    elif service != "ngc":
        routes.append(
            "or docker load an apt-based image (ubuntu:24.04, debian:12), then set BUILD_IMAGE "
            "and TRAIN_IMAGE to it, PYTHON_VERSION to its python3 (3.12, 3.11) and "
            "CUDA_FROM=pypi in .env (invoke doctor then names the lines)"
        )
    return Row(
        "base images",
        "error",
        f"base image {image} ({setting}) is not here and cannot be pulled: {reason} (a Docker "
        f"Hub rate limit looks the same: docker login)",
        "; ".join(routes),
    )


def local_base_candidates(limit: int = 3) -> list[ImageFacts]:
    """Read the distro and Python of a few local images whose names say Debian or Ubuntu (then
    CUDA), the images a build could start from, in about a second each."""
    from torchkiln import hostfacts

    def rank(name: str) -> int:
        short = name.rsplit("/", 1)[-1]
        return 0 if re.search(r"debian|ubuntu", short) else 1 if "cuda" in short else 2

    names = sorted(hostfacts.local_image_names(), key=rank)
    found = [hostfacts.image_facts(name) for name in names if rank(name) < 2][:limit]
    return [facts for facts in found if not facts.torchkiln]


def base_image_row(service: str, values: Mapping[str, str], facts: EngineFacts) -> Row:
    """Check a service's base images on the engine; name local replacements when one is missing."""
    from torchkiln import engine

    problems = {image: engine.image_reachable(image) for image in base_images(service, values)}
    local = local_base_candidates() if any(problems.values()) else []
    gpu_here = facts.nvidia and "cpu.yaml" not in values.get("COMPOSE_FILE", "")
    return check_base_images(service, values, problems, local, gpu_here)


def python_rows(
    service: str, values: Mapping[str, str], index_unreachable: bool = False
) -> list[Row]:
    """Read the base images' Python (local ones from the image, others from their names)."""
    from torchkiln import hostfacts

    if service not in settings.SOURCE:
        return []
    images = dict.fromkeys(values[name] for name in BASE_IMAGE_SETTINGS[service])
    facts = [hostfacts.image_facts(image) for image in images]
    return check_python(values, facts, index_unreachable)


# --- Python: the base images' own, or one fetched ----------------------------------------------

# The python3 each distro release installs with apt (packages.debian.org, packages.ubuntu.com).
DISTRO_PYTHON = {
    ("debian", "11"): "3.9",
    ("debian", "12"): "3.11",
    ("debian", "13"): "3.13",
    ("ubuntu", "20.04"): "3.8",
    ("ubuntu", "22.04"): "3.10",
    ("ubuntu", "24.04"): "3.12",
    ("ubuntu", "25.04"): "3.13",
    ("ubuntu", "25.10"): "3.13",
}


CODENAMES = {
    "bullseye": ("debian", "11"),
    "bookworm": ("debian", "12"),
    "trixie": ("debian", "13"),
    "focal": ("ubuntu", "20.04"),
    "jammy": ("ubuntu", "22.04"),
    "noble": ("ubuntu", "24.04"),
}


_DISTRO_IN_NAME = re.compile(r"(debian|ubuntu)[:_-]?(\d+(?:\.\d+)?|[a-z]+)")


def distro_from_name(image: str) -> tuple[str, str]:
    """Guess an image's distro from its name (`ubuntu:24.04`, `…-ubuntu24.04`, `debian:bookworm`);
    ('', '') when the name does not say."""
    for distro, version in _DISTRO_IN_NAME.findall(image.rsplit("/", 1)[-1]):
        if version in CODENAMES:
            return CODENAMES[version]
        if version[0].isdigit():
            return distro, version
    return "", ""


def image_python(facts: ImageFacts) -> tuple[str, str]:
    """The Python a build on this image gets without fetching one, and the distro named:
    its python3, else the one its distro installs; ('', distro) when that is not known."""
    distro, version = facts.distro, facts.distro_version
    if not distro:
        distro, version = distro_from_name(facts.image)
    named = f"{distro.capitalize()} {version}".strip()
    return facts.python or DISTRO_PYTHON.get((distro, version), ""), named


def check_python(
    values: Mapping[str, str], images: Sequence[ImageFacts], index_unreachable: bool = False
) -> list[Row]:
    """Judge PYTHON_VERSION against each base image's own Python: another version is fetched
    with uv from the index and the internet, which an air-gapped build cannot."""
    wanted = values["PYTHON_VERSION"]
    rows = []
    for facts in images:
        python, distro = image_python(facts)
        where = f"{facts.image} ({distro})" if distro else facts.image
        if not python:
            reason = "not here, and its name does not say" if facts.error else "unknown distro"
            rows.append(Row("python", "warn", f"{where}: its Python is not known ({reason})"))
        elif python == wanted:
            rows.append(Row("python", "ok", f"{where} has Python {python} = PYTHON_VERSION"))
        else:
            status = "error" if index_unreachable else "warn"
            detail = (
                f"{where} has Python {python}, not PYTHON_VERSION {wanted}: the build fetches "
                f"CPython {wanted} with uv (from the Python index, then the internet)"
            )
            if index_unreachable:
                detail += ", and the index does not answer from here"
            fix = (
                f"{append_to_env([f'PYTHON_VERSION={python}'])} (the image's own Python), or "
                f"keep {wanted} where the internet is reachable"
            )
            rows.append(Row("python", status, detail, fix))
    return rows


def apt_images(images: Sequence[ImageFacts]) -> list[tuple[ImageFacts, str, str]]:
    """The local images a build can start from (Debian or Ubuntu, Python known), with their
    Python and distro."""
    usable = []
    for facts in images:
        python, distro = image_python(facts)
        if not facts.error and facts.distro in ("debian", "ubuntu") and python:
            usable.append((facts, python, distro))
    return usable
