"""CUDA extensions on the host: the inputs checked in seconds, and what the build said of them.

- `merge_specs`: `--extension` items join EXTENSIONS from .env or the environment (one line says
  so); a project given twice with two versions is refused, the flag's version replaces the
  configured one (said too).
- `check_unique`: one project once, across specs and local folders (their names are read from
  their setup.py / pyproject.toml, as the build stage reads them).
- `index_problems`: every name==version is looked up on the index the build will use (or in the
  wheelhouse) with pip's own `pip index versions --no-binary :all:`, before anything builds.
- `summary_lines` and `failure_line`: the build's `torchkiln-extension:` report lines as the
  summary shows them, and a failed extension named by project and path as the last line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from torchkiln import settings, urls
from torchkiln.errors import UserError
from torchkiln.inimage import extreport

_REPORT = re.compile(
    r"^(?:#\d+ [\d.]+ )?" + re.escape(extreport.REPORT_PREFIX) + r"(\{.*\})\s*$", re.MULTILINE
)
_FAILED = re.compile(
    r"^(?:#\d+ [\d.]+ )?" + re.escape(extreport.FAILED_PREFIX) + r"(\{.*\})\s*$", re.MULTILINE
)
# `--extension DIR` folders replace these empty stages (docker/Dockerfile), at most this many.
EXTENSION_CONTEXTS = ("extension-src-0", "extension-src-1", "extension-src-2", "extension-src-3")
# How long one index lookup may take; the lookups run side by side.
LOOKUP_TIMEOUT_S = 60


def spec_project(spec: str) -> str:
    """The project of a name==version spec, as written."""
    return spec.split("==", 1)[0]


def merge_specs(
    given: Sequence[str], configured: str | None, where: str
) -> tuple[list[str], list[str]]:
    """Join --extension specs to the configured EXTENSIONS (from `where`: '.env' or 'the
    environment'); return the specs and the notes to print. The flag's version of a project
    replaces the configured one; two versions of one project among the flags are refused."""
    flags: dict[str, str] = {}
    for spec in dict.fromkeys(given):
        key = settings.project_key(spec_project(spec))
        if key in flags:
            raise UserError(
                f"--extension {flags[key]} and --extension {spec} name one project twice; one "
                f"image holds one version of a project: keep one"
            )
        flags[key] = spec
    normalize = settings.BY_NAME["EXTENSIONS"].normalize
    kept: list[str] = []
    notes: list[str] = []
    for spec in normalize(configured or "").split():
        replaced = flags.get(settings.project_key(spec_project(spec)))
        if replaced and replaced != spec:
            notes.append(f"note: --extension {replaced} replaces {spec} of EXTENSIONS ({where})")
        elif not replaced:
            kept.append(spec)
    if kept:
        notes.append(
            f"note: building EXTENSIONS from {where} ({' '.join(kept)}) as well as --extension; "
            f"EXTENSIONS= invoke build … builds only the --extension ones"
        )
    return [*kept, *flags.values()], notes


def folder_project(path: str) -> str:
    """The project name a local extension folder declares (its folder name when none)."""
    return extreport.project_name(path) or Path(path).name


def check_unique(specs: Iterable[str], folders: Mapping[str, str]) -> None:
    """Refuse one project twice: a spec and a local folder of it, or two folders of it."""
    seen = {settings.project_key(spec_project(spec)): spec for spec in specs}
    for path in folders.values():
        name = folder_project(path)
        key = settings.project_key(name)
        if key in seen:
            raise UserError(
                f"--extension {path} is project {name}, which {seen[key]} names too; one image "
                f"holds one version of a project: keep one"
            )
        seen[key] = path


# --- looking each spec up on the index ------------------------------------------------------


def lookup_command(
    spec: str, python_version: str, *, cert: str = "", wheelhouse: str = ""
) -> list[str]:
    """pip's own lookup of a spec's source distributions, on the index the build uses (its URL
    comes in the environment, see `index_environment`) or only in the wheelhouse, for the
    image's Python (Requires-Python counts)."""
    command = [sys.executable, "-m", "pip", "index", "versions", spec_project(spec)]
    command += ["--no-binary", ":all:", "--python-version", python_version, "--pre"]
    command += ["--disable-pip-version-check", "--retries", "1", "--timeout", "15"]
    if wheelhouse:
        command += ["--no-index", "--find-links", wheelhouse]
    if cert:
        command += ["--cert", cert]
    return command


def index_environment(values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the lookups: PIP_INDEX_URL as the build's pip gets it (the token as
    its password, user __token__ unless the URL names one, as net.sh does), in the environment
    rather than on a command line that `ps` shows; pip's own configuration otherwise."""
    env = dict(environ)
    if not values.get("PIP_INDEX_URL"):
        return env
    from torchkiln import compose

    url = compose.index_url(values["PIP_INDEX_URL"])
    token = values.get("PIP_INDEX_TOKEN", "")
    if token and not url.password:
        url = replace(url, user=url.user or "__token__", password=token)
    env["PIP_INDEX_URL"] = url.text()
    return env


def _version_key(text: str) -> str:
    return text.strip().lower().lstrip("v")


def lookup_problem(spec: str, returncode: int, output: str, where: str) -> str | None:
    """Read `pip index versions` output: why the spec cannot be downloaded, else None (also
    None when the index could not be asked at all: the build will say, this is no proof)."""
    project, version = spec.split("==", 1)
    match = re.search(r"^Available versions: (.+)$", output, re.MULTILINE)
    if returncode == 0 and match:
        versions = [item.strip() for item in match[1].split(",")]
        if _version_key(version) in map(_version_key, versions):
            return None
        shown = ", ".join(versions[:6]) + (" …" if len(versions) > 6 else "")
        return (
            f"--extension {spec}: {project} {version} has no source distribution {where} "
            f"(its versions with one: {shown}); pick one of those"
        )
    if re.search(r"No matching distribution found", output) and not _unreachable(output):
        return (
            f"--extension {spec}: {where} has no source distribution of {project} at all (for "
            f"Python of the image); check the name (pip index versions {project}), or build it "
            f"from its source folder: --extension DIR"
        )
    return None


def _unreachable(output: str) -> bool:
    return bool(
        re.search(
            r"Could not fetch URL|ConnectionError|connection|Max retries|SSLError|timed out",
            output,
            re.IGNORECASE,
        )
    )


def index_problems(
    specs: Sequence[str],
    values: Mapping[str, str],
    *,
    ca_bundle: str = "",
    wheelhouse: str = "",
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> tuple[list[str], list[str]]:
    """Look every spec up at once; return (problems that refuse the build, warnings)."""
    if not specs:
        return [], []
    env = index_environment(values, os.environ)
    where = (
        f"in the wheelhouse {wheelhouse}"
        if wheelhouse
        else f"on {urls.shown(values['PIP_INDEX_URL'])}"
        if values["PIP_INDEX_URL"]
        else "on the index"
    )

    def look(spec: str) -> tuple[str, subprocess.CompletedProcess[str] | None]:
        command = lookup_command(
            spec, values["PYTHON_VERSION"], cert=ca_bundle, wheelhouse=wheelhouse
        )
        try:
            return spec, run(
                command, capture_output=True, text=True, timeout=LOOKUP_TIMEOUT_S, env=env
            )
        except (OSError, subprocess.TimeoutExpired):
            return spec, None

    problems: list[str] = []
    warnings: list[str] = []
    with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
        for spec, result in pool.map(look, specs):
            output = "" if result is None else result.stdout + result.stderr
            problem = (
                None if result is None else lookup_problem(spec, result.returncode, output, where)
            )
            if problem:
                problems.append(problem)
            elif result is None or result.returncode != 0:
                warnings.append(
                    f"warning: --extension {spec}: could not look it up {where} "
                    f"({_last_line(output) or 'pip did not answer'}); the build will try"
                )
    return problems, warnings


def require_available(
    values: Mapping[str, str], *, ca_bundle: str = "", wheelhouse: str = ""
) -> None:
    """Refuse, in seconds, an EXTENSIONS spec the build could not download; warn when the index
    could not be asked."""
    problems, warnings = index_problems(
        values["EXTENSIONS"].split(), values, ca_bundle=ca_bundle, wheelhouse=wheelhouse
    )
    for warning in warnings:
        print(warning, file=sys.stderr)
    if problems:
        raise UserError("; ".join(problems))


def _last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip() and "experimental" not in line]
    return urls.mask_text(lines[-1].strip())[:200] if lines else ""


# --- what the build said ----------------------------------------------------------------------


def reports(log: str) -> list[dict[str, object]]:
    """The build's per-extension report lines, the last one of each extension."""
    found: dict[str, dict[str, object]] = {}
    for match in _REPORT.finditer(log):
        try:
            report = json.loads(match[1])
        except ValueError:
            continue
        found[str(report.get("name"))] = report
    return list(found.values())


def summary_lines(log: str) -> list[str]:
    """The summary's lines on extensions: what each one holds against the CCA."""
    return [f"extension:   {extreport.describe(report)}" for report in reports(log)]


def failure_line(log: str, contexts: Mapping[str, str], log_path: str = "") -> str | None:
    """Name a failed extension by project, spec or host folder, and step; None when no
    extension failed."""
    matches = list(_FAILED.finditer(log))
    if not matches:
        return None
    try:
        failed = json.loads(matches[-1][1])
    except ValueError:
        return None
    source = str(failed.get("source"))
    folder = failed.get("folder")
    if folder is not None:
        index = int(folder)
        if index < len(EXTENSION_CONTEXTS):
            source = contexts.get(EXTENSION_CONTEXTS[index], source)
    where = f" (the whole output is in {log_path})" if log_path else ""
    hint = str(failed.get("hint") or "its lines in the build output say why")
    return (
        f"extension {failed.get('name')} ({source}) failed at {failed.get('step')}: {hint}{where}"
    )
