"""`invoke build`'s orchestration: check in seconds, build the service through Compose, start
it, summarise.

A build's options pass each room once, downwards: `prepare` reads `.env`, `inputs.gather`
checks every input (flags, settings layers, paths) into one value, `buildplan.make` decides the
commands (`compose` writes them), and `build_service` is the thin edge that runs them
(`runner`), saying the estimate first (`estimate`) and the summary last (`buildsummary`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from torchkiln import (
    buildplan,
    buildsummary,
    checkrows,
    compose,
    cxxcheck,
    doctor,
    envfile,
    estimate,
    extensions,
    extsources,
    farm,
    hostfacts,
    indexcheck,
    inputs,
    runner,
    settings,
    timings,
    tlscheck,
)
from torchkiln.buildplan import BuildPlan
from torchkiln.checkrows import Row
from torchkiln.errors import UserError
from torchkiln.inputs import BuildOptions


def extension_folders(built: BuildPlan) -> dict[str, str]:
    """The local extension folders a build compiles (their contexts: name -> host path)."""
    return {
        name: path for name, path in built.contexts.items() if name in extensions.EXTENSION_CONTEXTS
    }


def prepare(
    root: Path, flags: Mapping[str, object], environ: Mapping[str, str], *, recorded: bool = False
) -> BuildPlan:
    """From a task's flags to a checked plan: read .env, check every input, decide the commands,
    and probe the indexes in seconds (a TLS-inspecting network gets its CA bundle here).
    `recorded`: fill the inputs not given from the service's last build (`invoke wheels`)."""
    options = BuildOptions.from_flags(flags)
    if recorded:
        options, note = inputs.with_recorded_inputs(root, options)
        if note:
            print(note)
    dotenv = inputs.read_dotenv(root)
    planned = plan(root, options, environ=environ, dotenv=dotenv)
    # Its settings were taken: a .env holding a password becomes its owner's alone, said once.
    private = envfile.keep_private(envfile.path(root))
    if private:
        print(private, file=sys.stderr)
    return with_host_ca(planned, environ)


def plan(
    root: Path,
    options: BuildOptions,
    *,
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
    cwd: Path | None = None,
) -> BuildPlan:
    """Check every input (`inputs.gather`), and decide the commands from them; runs nothing."""
    return buildplan.make(inputs.gather(root, options, environ=environ, dotenv=dotenv, cwd=cwd))


def check_builder(c, builder: str, *, export_cache: bool) -> None:
    """Refuse, in seconds, a builder that does not exist or cannot export the cache asked for."""
    if not builder and not export_cache:
        return
    inspected = c.run(
        shlex.join(compose.builder_inspect_command(builder)), hide=True, warn=True, in_stream=False
    )
    if inspected is None:
        return
    if inspected.failed and builder:
        raise UserError(
            f"buildx builder '{builder}' does not exist; docker buildx ls lists them, "
            f"docker buildx create --name {builder} --driver docker-container makes one"
        )
    if inspected.failed:
        raise UserError("docker buildx inspect failed; run invoke doctor to see why")
    problem = compose.cache_export_problem(inspected.stdout, builder) if export_cache else None
    if problem:
        raise UserError(problem)


def write_state(built: BuildPlan) -> None:
    """Write the build's Compose override into .torchkiln/, and, for a real build, the record
    of its inputs that `invoke wheels` reuses (a dry run records nothing)."""
    state = built.root / compose.STATE_DIR
    try:
        state.mkdir(exist_ok=True)
        envfile.write_atomic(built.root / built.override_path, built.override_text(), 0o600)
        if not built.dry:
            record = {"service": built.service, "inputs": built.options.inputs()}
            envfile.write_atomic(built.record_path, json.dumps(record, indent=2) + "\n", 0o600)
    except OSError as error:
        raise UserError(
            f"cannot write {state} ({error.strerror}); make the checkout writable for you"
        ) from None


def with_host_ca(built: BuildPlan, environ: Mapping[str, str]) -> BuildPlan:
    """Probe, in seconds, the indexes the build downloads from, and give it the CA bundle a
    TLS-inspecting network needs (saying so in one line), or keep the row that refuses it with
    the one to add (said with the engine's reasons, `build_service`).
    A build from a wheelhouse downloads nothing from an index: nothing to probe."""
    if built.options.wheelhouse:
        return built
    mine = settings.service_values(built.service, built.values)
    decision = tlscheck.gather_ca(mine, built.ca_bundle, environ)
    if decision.problem:
        return replace(built, preflight=[*built.preflight, decision.row()])
    if decision.note:
        print(decision.note, file=sys.stderr)
    if decision.bundle:
        built = replace(built, ca_bundle=decision.bundle)
    # The torch index too (name, TLS, the wanted torch): a failure names the setting.
    rows = indexcheck.index_rows(
        mine,
        decision.bundle or hostfacts.fresh_image_ca_bundle(),
        hostfacts.default_index_url(),
    )
    for row in rows:
        if row.status == "warn" and row.fix:  # an index the build needs did not answer
            print(f"warning: {row.check}: {row.detail}; {row.fix}", file=sys.stderr)
    return replace(built, preflight=[*built.preflight, *rows])


def build_service(c, built: BuildPlan) -> None:
    """Execute a plan (respecting `invoke --dry`) and print the summary."""
    dry = bool(c.config.run.dry)
    built = replace(built, dry=dry)
    # Engine, plugins, disk, and (when the container will start here) GPU runtime and driver:
    # refused in seconds rather than after a long build, by --dry as by the real build.
    # Every reason is said at once, the most fundamental first (checkrows.refusal).
    mine = settings.service_values(built.service, built.values)
    found = list(built.preflight)
    if built.service in settings.SOURCE and not checkrows.failed(found):
        # A spec the index lacks is found here, not after the torch compile.
        try:
            extensions.require_available(
                mine,
                ca_bundle=built.ca_bundle,
                wheelhouse=built.contexts.get(inputs.WHEELHOUSE_CONTEXT, ""),
            )
        except UserError as error:
            found.append(Row("extensions", "error", str(error)))
        folders = extension_folders(built)
        specs = mine["EXTENSIONS"].split()
        if (specs or folders) and inputs.WHEELHOUSE_CONTEXT not in built.contexts:
            # A C++ standard torch's headers do not take is found here, not in the compile.
            standards = cxxcheck.gather(
                specs,
                folders,
                mine,
                built.ca_bundle or hostfacts.fresh_image_ca_bundle(),
                hostfacts.default_index_url(),
            )
            found += standards
            for row in standards:
                if row.status == "warn":
                    print(f"warning: {row.check}: {row.detail}; {row.fix}", file=sys.stderr)
    facts = doctor.require_ready(
        mine, built.options.up, built.service, root=built.root, known=found
    )
    for note in built.notes:
        print(note)
    if not dry:
        check_builder(c, built.builder, export_cache=bool(built.cache_to))
    write_state(built)
    print(f"# {built.override_path} (this build's settings, sources and cache):")
    print(built.override_text(), end="")
    if dry:
        with c.cd(str(built.root)):
            for command in (built.build, built.push, built.start if built.options.up else []):
                if command:
                    c.run(shlex.join(command))
        return
    folders = extension_folders(built)
    if built.service in settings.SOURCE:  # ngc compiles nothing
        history = timings.read_timings(built.root)
        # Each extension's CUDA sources and archs, where its source can be read before the build.
        read = extsources.gather(
            mine["EXTENSIONS"].split(),
            folders,
            mine["PIP_INDEX_URL"] or hostfacts.default_index_url(),
            built.ca_bundle or hostfacts.fresh_image_ca_bundle(),
            built.contexts.get(inputs.WHEELHOUSE_CONTEXT, ""),
        )
        vision = Path(built.contexts.get(inputs.SOURCE_CONTEXTS["vision"], "-"))
        said = estimate.estimate(
            mine,
            facts.cpus,
            facts.memory_bytes,
            history,
            len(folders),
            extension_sources=read,
            vision=extsources.of_folder("torchvision", vision) if vision.is_dir() else None,
        )
        print(said, flush=True)
        # The compile cache and the farm, in seconds, before any compile (farm.py).
        for line in farm.compile_preflight(mine, built.root, facts.cpus, facts.memory_bytes):
            print(line, flush=True)
    with runner.checkout_lock(built.root, "build"):
        print(f"$ {shlex.join(built.build)}", flush=True)
        started = time.monotonic()
        log = built.root / built.log_path
        result = runner.stream(
            built.build, built.root, compose.build_secrets(built.values, built.root), log
        )
        if result.failed:
            line = buildsummary.failure_line(
                f"docker compose build {built.service}",
                result,
                log=built.log_path,
                ca_bundle=built.ca_bundle,
                host_bundle=buildsummary.host_ca_hint(),
            )
            # A failed extension is named by project, spec or host folder, and step; a
            # certificate's failure keeps the line that names --ca-bundle.
            named = extensions.failure_line(result.output, built.contexts, built.log_path)
            raise UserError(named if named and "--ca-bundle" not in line else line)
        elapsed = time.monotonic() - started
        if built.service in settings.SOURCE:
            date = time.strftime("%Y-%m-%d")
            learned = timings.timing_entries(mine, result.output, elapsed, date, len(folders))
            timings.record_timings(built.root, learned)
    with c.cd(str(built.root)):
        if built.push:
            # No stdin: what is typed meanwhile stays for the shell (docker compose exec …).
            pushed = c.run(shlex.join(built.push), warn=True, in_stream=False)
            if pushed is not None and pushed.failed:
                registry = built.push_ref.split("/", 1)[0]
                raise UserError(
                    f"docker push {built.push_ref} failed; run docker login {registry}, and "
                    f"check that REGISTRY_IMAGE names a repository you may push to"
                )
        if built.options.up:
            started_up = c.run(shlex.join(built.start), warn=True, in_stream=False)
            if started_up is not None and started_up.failed:
                raise UserError(buildsummary.up_failure_line(built.service, started_up.stderr))
        inspected = c.run(
            shlex.join(["docker", "image", "inspect", "--format", "{{.Size}}", built.image]),
            hide=True,
            warn=True,
            in_stream=False,
        )
    size = int(inspected.stdout.strip() or 0) if inspected.ok else 0
    gpu_here = facts.nvidia and "cpu.yaml" not in mine["COMPOSE_FILE"]
    print(buildsummary.summary(built, elapsed, size, result.output, gpu_here))
