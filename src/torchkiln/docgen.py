"""The docs site's generated parts, made from the product itself so they cannot drift: the
settings reference (from the settings table), the task list (from invoke's own help), and the
error templates the troubleshooting page must index (read from the source)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torchkiln import settings

# --- settings reference -------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else "(empty)"


def settings_reference() -> str:
    """Render every setting of the table, grouped as `.env` groups them, as Markdown tables."""
    lines: list[str] = []
    for group, title in settings.GROUP_TITLES.items():
        lines += [
            f"## {title}",
            "",
            "| setting | default | build arg of | meaning |",
            "|---|---|---|---|",
        ]
        for setting in settings.SETTINGS:
            if setting.group != group:
                continue
            services = ", ".join(setting.services) or "run time only"
            lines.append(
                f"| `{setting.name}` | {_cell(_code(setting.default))} | {services} "
                f"| {_cell(setting.meaning)} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- task list ------------------------------------------------------------------------------


def _invoke(root: Path, *args: str) -> str:
    command = [sys.executable, "-m", "invoke", "--search-root", str(root), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def task_names(listing: str) -> list[str]:
    """Read the task names from `invoke --list`'s output."""
    return re.findall(r"^  (\S+)", listing, re.M)


def task_reference(root: Path) -> str:
    """Render `invoke --help TASK` of every task `invoke --list` shows, as printed."""
    names = task_names(_invoke(root, "--list"))
    parts: list[str] = []
    for name in names:
        shown = _invoke(root, "--help", name).rstrip()
        parts += [f"## `invoke {name}`", "", "```text", shown, "```", ""]
    return "\n".join(parts)


def write_generated(root: Path, folder: Path) -> list[Path]:
    """Write the generated pages into `folder` (the docs build calls this); return them."""
    folder.mkdir(parents=True, exist_ok=True)
    pages = {
        "settings-table.md": settings_reference(),
        "task-help.md": task_reference(root),
    }
    written = []
    for name, text in pages.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# --- error templates ------------------------------------------------------------------------

# Calls whose first argument is a line the product prints to a user as an error.
ERROR_CALLS = {"UserError", "Exit", "error", "CCAError"}
PLACEHOLDER = "…"
# A template with fewer words of its own wraps a message made elsewhere (that one is collected).
MIN_WORDS = 3


@dataclass(frozen=True)
class Template:
    """An error line as the source spells it, its variable parts shown as '…'."""

    text: str
    where: str  # file:line

    def words(self) -> int:
        return len(re.findall(r"[A-Za-z]{2,}", self.text.replace(PLACEHOLDER, " ")))


def _template_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
            else:
                out.append(PLACEHOLDER)
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template_text(node.left), _template_text(node.right)
        return (left or PLACEHOLDER) + (right or PLACEHOLDER)
    return None


def normalize(text: str) -> str:
    """One spelling for matching: '…' for each variable part, '...' read as '…', spaces single."""
    text = text.replace("...", PLACEHOLDER)
    text = re.sub(rf"{PLACEHOLDER}(?:\s*{PLACEHOLDER})+", PLACEHOLDER, text)
    return " ".join(text.split())


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def templates_in(source: str, filename: str) -> list[Template]:
    """Collect the error templates of one Python file: the message of every UserError, Exit,
    session.error and CCAError made there, and the detail of each doctor row whose status is
    error or warn and that names a fix."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = _called_name(node)
        message: ast.expr | None = None
        if name in ERROR_CALLS:
            message = node.args[0]
        elif name == "Row" and len(node.args) >= 4:  # a doctor row with a fix
            status = node.args[1]
            if isinstance(status, ast.Constant) and status.value in ("error", "warn"):
                message = node.args[2]
        text = _template_text(message) if message is not None else None
        if text is None:
            continue
        template = Template(normalize(text), f"{filename}:{node.lineno}")
        if template.words() >= MIN_WORDS:
            found.append((node.lineno, template))
    return [template for _, template in sorted(found, key=lambda item: item[0])]


# A build script's error: `echo "ERROR: …"` or `refuse "…"`, its words in double-quoted pieces
# that may go on over lines ending in a backslash.
_SHELL_ERROR = re.compile(
    r'(?:echo "ERROR: |refuse ")((?:[^"\\]|\\.)*)"((?:\s*\\\n\s*"(?:[^"\\]|\\.)*")*)'
)
_SHELL_PIECE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SHELL_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*|[*@#?0-9])")


def shell_templates_in(source: str, filename: str) -> list[Template]:
    """Collect the error lines of one build script (what the build log shows after ERROR:)."""
    found = []
    for match in _SHELL_ERROR.finditer(source):
        pieces = [match[1], *_SHELL_PIECE.findall(match[2])]
        text = _SHELL_VARIABLE.sub(PLACEHOLDER, " ".join(pieces))
        line = source.count("\n", 0, match.start()) + 1
        template = Template(normalize(text), f"{filename}:{line}")
        if template.words() >= MIN_WORDS:
            found.append(template)
    return found


def error_templates(root: Path) -> list[Template]:
    """Collect the error templates of the product: its Python code (the package, tasks.py and
    noxfile.py) and the build scripts under docker/."""
    files = sorted((root / "src" / "torchkiln").rglob("*.py"))
    files += [root / "tasks.py", root / "noxfile.py"]
    found = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        found += templates_in(path.read_text(encoding="utf-8"), relative)
    scripts = sorted((root / "docker").rglob("*.sh")) + sorted(
        (root / "docker").glob("*Dockerfile")
    )
    for path in scripts:
        relative = path.relative_to(root).as_posix()
        found += shell_templates_in(path.read_text(encoding="utf-8"), relative)
    return found


def indexed_lines(page: str) -> list[str]:
    """The error lines a troubleshooting page indexes: the code span that opens each entry
    (a list item of the form ``- `line` — fix and why``; a line holding backquotes is quoted
    in double ones, as Markdown does)."""
    found = re.findall(r"^- (`+) ?(.+?) ?\1(?!`)", page, re.M)
    return [normalize(text) for _, text in found]


def missing_entries(templates: Iterable[Template], page: str) -> list[Template]:
    """The templates no entry of the page names; an entry names a template when it holds the
    template's text (the entry may quote more of the printed line)."""
    entries = indexed_lines(page)
    return [t for t in templates if not any(_matches(t.text, entry) for entry in entries)]


def _matches(template: str, entry: str) -> bool:
    if template in entry:
        return True
    # A template's variable part may be shown in the entry as what it prints, e.g. `'86'`.
    pattern = re.escape(template).replace(re.escape(PLACEHOLDER), ".*?")
    return re.search(pattern, entry) is not None
