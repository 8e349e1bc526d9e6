"""What `invoke build` says when it ends: the summary (stage times, the cache-rate line, the
build's own checks, the next steps that work here), or the one line that names a failure.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from torchkiln import buildchecks, buildlog, extensions, runner, settings
from torchkiln.buildplan import BuildPlan

_JOBS_LINE = re.compile(r"^(?:#\d+ [\d.]+ )?torchkiln-jobs: (.+)$", re.MULTILINE)
# The line each compile step prints from `sccache --show-stats --stats-format=json`
# (torchkiln.inimage.compilecache), and the farm's state it names when compiles fell back.
_FARM_LINE = re.compile(r"torchkiln-sccache-farm: (\S+) (?!connected )(.+)$", re.MULTILINE)
_LINE = re.compile(
    r"torchkiln-sccache: (\S+) hits=(\d+) misses=(\d+) remote_hits=(\d+|\?) remote_errors=(\d+) "
    r"uncached=(\d+) local=(\d+) dist=(\d+) dist_errors=(\d+) servers=(\S+) reasons=(\S+)"
)


def _pairs(text: str) -> dict[str, int]:
    if text == "-":
        return {}
    found: dict[str, int] = {}
    for item in text.split(","):
        key, _, count = item.rpartition(":")
        found[key] = found.get(key, 0) + int(count)
    return found


def sccache_rate(log: str) -> str:
    """Summarise the compile steps' sccache lines: hit rate, local and remote hits, what could
    not be cached and why, what ran on the farm (per server) and what fell back, and why."""
    steps = 0
    totals = dict.fromkeys(("hits", "misses", "remote", "errors", "uncached", "local"), 0)
    totals.update(dist=0, fallback=0)
    servers: dict[str, int] = {}
    reasons: dict[str, int] = {}
    fell_back: set[str] = set()  # the steps some of whose compiles the farm did not take
    uncounted = 0  # hits of steps whose remote store sccache does not count apart (read-only)
    for match in _LINE.finditer(log):
        steps += 1
        if int(match[9]):
            fell_back.add(match[1])
        if match[4] == "?":
            uncounted += int(match[2])
        for key, group in zip(totals, match.groups()[1:9], strict=True):
            totals[key] += int(group) if group != "?" else 0
        for key, count in _pairs(match[10]).items():
            servers[key] = servers.get(key, 0) + count
        for key, count in _pairs(match[11]).items():
            reasons[key] = reasons.get(key, 0) + count
    if not steps:
        return "no compile step ran (BuildKit took them from its cache)"
    hits, misses = totals["hits"], totals["misses"]
    text = f"{steps} compile step{'s' if steps != 1 else ''} ran"
    if hits + misses:
        text = f"{100 * hits / (hits + misses):.0f}% ({hits} hits, {misses} misses)"
        if uncounted:
            text += (
                f"; {uncounted} hits from the local cache or the team's read-only one (sccache "
                "does not count them apart)"
            )
        elif totals["remote"] or totals["errors"]:
            text += f"; {hits - totals['remote']} hits local, {totals['remote']} from the team's"
            text += " remote cache"
    elif not totals["uncached"]:
        return f"{text}; no compiler call of theirs went through sccache"
    if totals["uncached"]:
        why = ", ".join(f"{key} {count}" for key, count in sorted(reasons.items()))
        text += f"; {totals['uncached']} calls sccache could not cache ({why})"
    if totals["errors"]:
        text += f"; WARNING the remote cache failed {totals['errors']} times"
    if servers or totals["fallback"]:
        each = ", ".join(f"{key} {count}" for key, count in sorted(servers.items()))
        text += f"; farm: {totals['dist']} compiled remotely ({each or 'none'}), "
        text += f"{totals['local']} locally"
    if totals["fallback"]:
        said = [f"{step}: {text}" for step, text in _FARM_LINE.findall(log) if step in fell_back]
        why = "; ".join(dict.fromkeys(said))
        text += (
            f"; WARNING {totals['fallback']} compiles fell back to this machine: the farm did "
            f"not take them ({why or 'it stopped answering during the step'})"
        )
    return text


def next_steps(
    service: str, up: bool, values: Mapping[str, str], gpu_here: bool
) -> list[list[str]]:
    """The commands to run next that work on this machine: the smoke check on the CPU where no
    GPU reaches containers (checked against CCA where the image holds code compiled for it)."""
    start = (
        ["docker", "compose", "exec", service, "zsh"]
        if up
        else ["docker", "compose", "up", "--detach", service]
    )
    smoke = ["nox", "-s", "smoke", "--", "--service", service]
    cuda = values.get("CUDA_FROM") != "none"
    if not cuda or not gpu_here:
        smoke.append("--allow-cpu")
    if cuda and not gpu_here and values.get("CCA") and service in settings.SOURCE:
        # No GPU here to read the archs from: the audit checks the binaries against CCA.
        smoke += ["--expect-cca", values["CCA"]]
    return [start, smoke, ["invoke", "wheels", "--service", service]]


def summary(
    built: BuildPlan,
    seconds: float,
    size_bytes: int,
    log: str,
    gpu_here: bool = True,
) -> str:
    """Render the lines printed after a successful build."""
    service = built.service
    mine = settings.service_values(service, built.values)
    lines = [
        f"image:       {built.image} ({size_bytes / 1e9:.2f} GB)",
        f"build time:  {runner.format_duration(seconds)}",
        *(
            f"  {stage:<18} {runner.format_duration(spent)}"
            for stage, spent in buildlog.stage_seconds(log)[:6]
            if spent >= 10
        ),
        f"sccache:     {sccache_rate(log)}",
        *buildchecks.summary_lines(log),
        *extensions.summary_lines(log),
        *(f"jobs:        {line}" for line in dict.fromkeys(_JOBS_LINE.findall(log))),
        f"steps run:   {len(buildlog.executed_steps(log))} (the others from cache)",
        f"log:         {built.log_path} (the whole output; stage times are kept for estimates)",
        *([f"pushed:      {built.push_ref}"] if built.push_ref else []),
        *(f"cache to:    {spec}" for spec in built.cache_to),
        "next:",
        *(
            f"  {shlex.join(command)}"
            for command in next_steps(service, built.options.up, mine, gpu_here)
        ),
    ]
    return "\n".join(lines)


# What pip, curl, git, apt and uv say when a server's certificate chain does not verify.
_CERTIFICATE_ERROR = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSL certificate problem|"
    r"server certificate verification failed|Certificate verification failed|"
    r"invalid peer certificate|self[- ]signed certificate in certificate chain",
    re.IGNORECASE,
)


def failure_line(
    what: str,
    result: runner.Streamed,
    log: str = "",
    ca_bundle: str = "",
    host_bundle: str = "",
) -> str:
    """Say that a build failed, pointing at BuildKit's ERROR lines only when there are some;
    a certificate that did not verify inside the build ends with the --ca-bundle to add
    (`host_bundle`: the one this host's tools use, to try first)."""
    errors = [line for line in result.output.splitlines() if "ERROR" in line]
    where = "the ERROR lines above name the step" if errors else "its last lines above say why"
    if log:
        where += f" (the whole output is in {log})"
    line = f"{what} failed (exit {result.code}); {where}; fix it and run the command again"
    certificate = _CERTIFICATE_ERROR.search(result.output)
    if not certificate:
        return line
    seen = certificate.group(0)
    if ca_bundle:
        return (
            f"{line}; a server's TLS certificate did not verify inside the build ({seen}) with "
            f"the CA bundle given ({ca_bundle}): a TLS-inspecting proxy signs with another CA; "
            f"give its bundle with --ca-bundle FILE (or CA_BUNDLE=FILE in .env)"
        )
    example = (
        f"--ca-bundle {host_bundle}, the one this host uses" if host_bundle else "--ca-bundle FILE"
    )
    return (
        f"{line}; a server's TLS certificate did not verify inside the build ({seen}): behind a "
        f"TLS-inspecting proxy, give the build its CA bundle: {example} (invoke doctor's tls row "
        f"says which one verifies the index)"
    )


def up_failure_line(service: str, stderr: str) -> str:
    """Name the cause of a failed `docker compose up` from what Compose said."""
    text = " ".join(stderr.split())
    if re.search(r"nvidia|could not select device driver|gpu", text, re.IGNORECASE):
        return (
            f"docker compose up {service} failed: no NVIDIA runtime for the GPU reservation; "
            f"install the NVIDIA Container Toolkit, or add compose/cpu.yaml to COMPOSE_FILE "
            f"in .env (invoke env --force does)"
        )
    return f"docker compose up {service} failed: {text[-300:] or 'no message'}"


def host_ca_hint() -> str:
    """The CA bundle this host's tools use (its variables, pip's config, else the system's)."""
    import os

    from torchkiln import hostfacts

    found = hostfacts.host_ca_bundles(os.environ)
    return found[0].path if found else hostfacts.system_ca_bundle()
