"""What the build's own checks said, for `invoke build`'s summary.

The build steps check their output in seconds and print one machine-readable line each
(`torchkiln-<what>: …`): the torch wheel (a CUDA build with the archs asked for), parity with the
official wheel of the same version, the runtime closure, the compile steps' peak memory, and the
train image's link audit. This turns those lines of BuildKit's plain log into summary lines. A step
that came from the cache printed nothing this time, and says nothing here.
"""

from __future__ import annotations

import re

_PREFIX = r"^(?:#\d+ [\d.]+ )?"
_WHEEL = re.compile(_PREFIX + r"torchkiln-wheelcheck: (.+)$", re.MULTILINE)
_PARITY = re.compile(_PREFIX + r"torchkiln-parity: (.+)$", re.MULTILINE)
_CLOSURE = re.compile(_PREFIX + r"torchkiln-closure: (.+)$", re.MULTILINE)
_MEMORY = re.compile(
    _PREFIX + r"torchkiln-memory: (\S+) peak=(\d+) MB MAX_JOBS=(\d+)$", re.MULTILINE
)
_LINKS = re.compile(
    _PREFIX + r"(OK|FAILED: .+?) +\((\d+) files, (\d+) librar(?:y|ies) needed", re.MULTILINE
)


def summary_lines(log: str) -> list[str]:
    """The summary lines of the checks the build ran this time."""
    lines = [f"torch:       {text}" for text in dict.fromkeys(_WHEEL.findall(log))]
    for text in dict.fromkeys(_PARITY.findall(log)):
        if text.startswith("lost "):
            lines.append(f"parity:      WARNING {text}")
        else:
            lines.append(f"parity:      {text}")
    for packages in dict.fromkeys(_CLOSURE.findall(log)):
        lines.append(f"closure:     installed for what the build linked: {packages}")
    for name, megabytes, jobs in _MEMORY.findall(log):
        lines.append(
            f"memory:      {name} peaked at {int(megabytes) / 1024:.1f} GB with MAX_JOBS={jobs}"
        )
    for verdict, files, needed in _LINKS.findall(log)[-1:]:
        what = "every library resolves" if verdict == "OK" else verdict
        lines.append(f"link audit:  {what} ({files} files, {needed} libraries needed)")
    return lines
