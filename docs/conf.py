"""Sphinx configuration of the torchkiln docs site (`nox -s docs` builds it)."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "src"))

from torchkiln import docgen  # noqa: E402

# The settings table and the task help are made from the product at every build, never kept.
docgen.write_generated(ROOT, DOCS / "_generated")

project = "torchkiln"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "requirements.txt"]
# `[text](page.md#a-heading)` links resolve as on a forge: a slug for headings down to ####.
myst_heading_anchors = 4
myst_enable_extensions = ["deflist"]
# Every internal reference must resolve: a broken link fails the build (-W turns it into an error).
nitpicky = True
html_theme = "furo"
html_title = "torchkiln"
html_static_path: list[str] = []
