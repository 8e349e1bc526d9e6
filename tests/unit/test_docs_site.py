"""The docs site's generated parts and the README as a landing page: the settings reference
lists exactly the settings of the table, the task help covers every task, and every link of
the README into docs/ reaches a page and a heading that exist."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from torchkiln import docgen, lint, settings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def reference_rows(page: str) -> dict[str, str]:
    """Setting name -> default cell, read from the reference's table rows."""
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]*?) \|", page, re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a setting is listed twice"
    return dict(rows)


def test_settings_reference_lists_exactly_the_settings_of_the_table():
    rows = reference_rows(docgen.settings_reference())
    assert set(rows) == {setting.name for setting in settings.SETTINGS}
    for setting in settings.SETTINGS:
        shown = f"`{setting.default}`" if setting.default else "(empty)"
        assert rows[setting.name] == shown.replace("|", "\\|"), setting.name


def test_settings_reference_follows_a_changed_table(monkeypatch):
    added = settings.Setting("NEW_KNOB", "7", "a knob added later", "build", ("train",))
    kept = [s for s in settings.SETTINGS if s.name != "TZ"]
    monkeypatch.setattr(settings, "SETTINGS", (*kept, added))
    rows = reference_rows(docgen.settings_reference())
    assert "NEW_KNOB" in rows and "TZ" not in rows


def test_settings_page_shows_the_generated_table():
    page = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    assert "```{include} _generated/settings-table.md" in page


def test_task_names_read_from_invokes_listing():
    listing = (
        "Available tasks:\n\n  build    Validate, build …\n  clean    Remove this checkout's\n"
        "           nothing of others'.\n  up       Start the service's container\n"
    )
    assert docgen.task_names(listing) == ["build", "clean", "up"]


def test_task_help_covers_every_task_of_tasks_py():
    from invoke import Collection

    sys.path.insert(0, str(REPO))
    import tasks

    declared = set(Collection.from_module(tasks).task_names)
    page = docgen.task_reference(REPO)
    shown = set(re.findall(r"^## `invoke (\S+)`$", page, re.M))
    assert shown == declared
    assert "--wheelhouse" in page and "Usage: inv[oke]" in page


def slug(heading: str) -> str:
    """A heading's anchor as forges and MyST (myst_heading_anchors) make it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(title) for title in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def readme_links() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]


def test_slug_matches_the_sites_anchors():
    assert slug("No Docker Hub (or NGC)") == "no-docker-hub-or-ngc"
    assert slug("`EXTENSION_ARCHS`: `cca` (the default) or `as-is`") == (
        "extension_archs-cca-the-default-or-as-is"
    )


def test_every_readme_link_reaches_a_page_and_heading():
    links = readme_links()
    assert len(links) >= 10
    for link in links:
        target, _, anchor = link.partition("#")
        path = (README.parent / target).resolve()
        assert path.is_file(), f"README links {link}: no file {target}"
        if anchor:
            assert anchor in anchors(path), f"README links {link}: no heading #{anchor}"


@pytest.mark.parametrize(
    "dead_end",
    [
        "no-docker-hub-or-ngc",
        "my-network-has-no-pytorch-index",
        "my-extension-needs-an-older-torch",
        "no-gpu-on-this-machine",
    ],
)
def test_each_dead_end_is_a_link_from_the_readme_into_troubleshooting(dead_end):
    assert f"docs/troubleshooting.md#{dead_end}" in readme_links()


def test_readme_fits_a_landing_page():
    assert lint.readme_problem(REPO) == ""


def test_readme_length_check_names_the_count_and_the_fix(tmp_path):
    (tmp_path / "README.md").write_text("line\n" * 201)
    problem = lint.readme_problem(tmp_path)
    assert "201 lines, more than 200" in problem and "docs/" in problem
    (tmp_path / "README.md").write_text("line\n" * 200)
    assert lint.readme_problem(tmp_path) == ""


def test_every_page_is_in_the_sites_navigation():
    index = (REPO / "docs" / "index.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^([a-z0-9-]+)$", index, re.M))
    pages = {path.stem for path in (REPO / "docs").glob("*.md")} - {"index"}
    assert pages == listed
