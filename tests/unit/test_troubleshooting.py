"""Every error line the product can print has an entry in docs/troubleshooting.md: the lines
are collected from the source (UserError, invoke.Exit, session.error, CCAError, doctor rows with
a fix, the build scripts' ERROR lines), so a new one fails this test until its entry is written."""

from __future__ import annotations

from pathlib import Path

from torchkiln import docgen

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "troubleshooting.md"


def missing_report(missing: list[docgen.Template]) -> str:
    lines = [
        f"{len(missing)} error lines have no entry in docs/troubleshooting.md; add each under "
        f"the heading that fits:"
    ]
    lines += [f"- `{t.text}` — (the fix, and why)   [{t.where}]" for t in missing]
    return "\n".join(lines)


def test_every_error_line_of_the_product_has_an_entry():
    templates = docgen.error_templates(REPO)
    assert len(templates) > 80  # the collector still finds the product's errors
    missing = docgen.missing_entries(templates, PAGE.read_text(encoding="utf-8"))
    assert not missing, missing_report(missing)


SOURCE = """
def f(c, dest, row):
    raise UserError(f"--dest {dest} is not empty; pass --force, or choose another --dest")
    raise UserError("GID '0' is the root group; " + "use your own group id")
    raise Exit(f"{row.check}: {row.detail}")
    session.error(f"image {dest} is not built; run invoke build")
    Row("disk", "error", f"only {dest} GB free at Docker's root", "invoke clean")
    Row("disk", "warn", "not checked: the engine is unreachable")
    Row("disk", "ok", f"{dest} GB free")
    raise CCAError(f"CCA '{dest}' is not a compute capability; write it as 8.6")
"""


def test_collector_reads_messages_fstrings_concatenations_and_doctor_rows_with_a_fix():
    found = [t.text for t in docgen.templates_in(SOURCE, "x.py")]
    assert found == [
        "--dest … is not empty; pass --force, or choose another --dest",
        "GID '0' is the root group; use your own group id",
        "image … is not built; run invoke build",
        "only … GB free at Docker's root",
        "CCA '…' is not a compute capability; write it as 8.6",
    ]  # a wrapper of other messages and rows without a fix are left out


def test_an_entry_may_quote_an_example_of_the_line():
    templates = docgen.templates_in(SOURCE, "x.py")
    page = (
        "- `CCA '86' is not a compute capability; write it as 8.6` — write major.minor.\n"
        "- `--dest dist is not empty; pass --force, or choose another --dest` — why.\n"
        "- ``GID '0' is the root group; use your own group id`` — why.\n"
        "Prose naming `image … is not built; run invoke build` is no entry.\n"
    )
    missing = [t.text for t in docgen.missing_entries(templates, page)]
    assert missing == ["image … is not built; run invoke build", "only … GB free at Docker's root"]


def test_the_failure_names_each_missing_line_and_where_it_is():
    missing = docgen.missing_entries(docgen.templates_in(SOURCE, "src/x.py"), "")
    report = missing_report(missing)
    assert report.startswith("5 error lines have no entry")
    assert (
        "- `image … is not built; run invoke build` — (the fix, and why)   [src/x.py:6]" in report
    )


SCRIPT = """set -euo pipefail
if [[ -z ${TORCH_CUDA_ARCH_LIST:-} ]]; then
  echo "ERROR: TORCH_CUDA_ARCH_LIST is empty; build with invoke build --cca 8.6 (it derives" \\
    "it from CCA)" >&2
fi
echo "ERROR: torch changed: $before -> $after" >&2
refuse "UID $uid is the system account '$existing' in the base image; use your own id"
echo "building $name"
"""


def test_collector_reads_a_build_scripts_error_lines_over_continued_pieces():
    found = docgen.shell_templates_in(SCRIPT, "docker/scripts/x.sh")
    assert [(t.text, t.where) for t in found] == [
        (
            "TORCH_CUDA_ARCH_LIST is empty; build with invoke build --cca 8.6 (it derives it "
            "from CCA)",
            "docker/scripts/x.sh:3",
        ),
        (
            "UID … is the system account '…' in the base image; use your own id",
            "docker/scripts/x.sh:7",
        ),
    ]  # "torch changed: … -> …" has too few words of its own to be a line with a fix
