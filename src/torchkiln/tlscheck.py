"""TLS: does the network inspect TLS, and which CA bundle do builds need?

The build's indexes are probed from the host in seconds (a TLS handshake each); `decide_ca` is
the pure decision, `gather_ca` the probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torchkiln.checkrows import Row
from torchkiln.hostfacts import CABundle, TLSVerdict


@dataclass(frozen=True)
class CADecision:
    """Which CA bundle builds get as their secret, and what to say about it: `note` (one line)
    when it was chosen here by itself, `problem` and `fix` when the build must be refused."""

    bundle: str = ""
    detail: str = ""
    note: str = ""
    problem: str = ""
    fix: str = ""
    unreachable: bool = False  # no index answered: nothing is known either way

    def row(self) -> Row:
        """Doctor's row for it."""
        if self.problem:
            return Row("tls", "error", self.problem, self.fix)
        if self.unreachable:
            return Row("tls", "warn", self.detail, self.fix)
        return Row("tls", "ok", self.note.removeprefix("note: ") or self.detail)


PROXY_CA_FIX = (
    "get the CA certificate (PEM) of the proxy or index from whoever runs it, then: invoke "
    "build --ca-bundle /path/to/that-ca.pem (or CA_BUNDLE=/path/to/that-ca.pem in .env)"
)


def decide_ca(
    urls: Sequence[str],
    configured: CABundle | None,
    candidates: Sequence[CABundle],
    system: str,
    fresh: str,
    verify: Callable[[str, str], TLSVerdict],
) -> CADecision:
    """Decide the build's CA bundle from TLS handshakes with the indexes it downloads from.

    `verify(url, bundle)` shakes hands; `fresh` is what a freshly installed image trusts
    (Mozilla's list). An index that a fresh image does not trust but a bundle of this host does
    is a TLS-inspecting network (or a private CA): builds take that bundle by themselves. A
    bundle the user gave is used as given, and refused when it does not verify an index.
    """
    if not urls:
        return CADecision(configured.path if configured else "", "no https index to check")

    def first_problem(bundle: str) -> tuple[str, TLSVerdict]:
        verdicts = [(url, verify(url, bundle)) for url in urls]
        for wanted in ("untrusted", "unreachable"):
            for url, verdict in verdicts:
                if verdict.status == wanted:
                    return url, verdict
        return urls[0], TLSVerdict("ok")

    def unreachable(url: str, verdict: TLSVerdict, bundle: str = "") -> CADecision:
        return CADecision(
            bundle,
            f"{url} does not answer from here ({verdict.reason}): TLS not checked",
            fix="a build needs the index unless it has --wheelhouse DIR; check HTTPS_PROXY",
            unreachable=True,
        )

    others = [bundle for bundle in candidates if not configured or bundle.path != configured.path]
    if system and all(bundle.path != system for bundle in others):
        others.append(CABundle("the system's CA bundle", system))
    if configured:
        url, verdict = first_problem(configured.path)
        if verdict.status == "unreachable":
            return unreachable(url, verdict, configured.path)
        if verdict.status == "ok":
            detail = f"{configured.source} {configured.path} verifies {url}"
            return CADecision(configured.path, detail)
        better = next((b for b in others if first_problem(b.path)[1].status == "ok"), None)
        fix = (
            f"invoke build --ca-bundle {better.path} ({better.source}, which verifies it), or "
            f"CA_BUNDLE={better.path} in .env"
            if better
            else PROXY_CA_FIX
        )
        problem = (
            f"{configured.source} {configured.path} does not verify {url} ({verdict.reason}); "
            f"builds would fail at their first download"
        )
        return CADecision(configured.path, problem=problem, fix=fix)
    url, verdict = first_problem(fresh) if fresh else (urls[0], TLSVerdict("unreachable", "?"))
    if verdict.status == "ok":
        return CADecision("", f"{url} verifies with the CAs a fresh image has: no CA bundle needed")
    if verdict.status == "unreachable":
        # Nothing to go on but the host's own setting: its tools use that bundle on this network.
        custom = next((bundle for bundle in others if bundle.path != system), None)
        if custom is None:
            return unreachable(url, verdict)
        note = (
            f"note: {custom.source} names {custom.path}, not the system's CA bundle: builds use "
            f"it as their CA secret (as --ca-bundle {custom.path}); set CA_BUNDLE in .env to "
            f"choose another"
        )
        return CADecision(custom.path, note=note)
    for bundle in others:
        if first_problem(bundle.path)[1].status == "ok":
            note = (
                f"note: {url} presents a certificate a fresh image does not trust "
                f"({verdict.reason}): a TLS-inspecting proxy or a private CA; {bundle.source} "
                f"{bundle.path} verifies it, so builds use it as their CA secret (as --ca-bundle "
                f"{bundle.path})"
            )
            return CADecision(bundle.path, note=note)
    problem = (
        f"{url} presents a certificate that neither a fresh image nor any CA bundle of this host "
        f"trusts ({verdict.reason}): a TLS-inspecting proxy or a private CA; builds would fail "
        f"at their first download"
    )
    return CADecision(problem=problem, fix=PROXY_CA_FIX)


def index_urls(values: Mapping[str, str], default_index: str) -> list[str]:
    """The https indexes a build downloads from: PIP_INDEX_URL (else pip's default), and
    TORCH_INDEX_URL where it is set."""
    urls = [values.get("PIP_INDEX_URL") or default_index, values.get("TORCH_INDEX_URL", "")]
    return list(dict.fromkeys(url for url in urls if url.startswith("https://")))


def gather_ca(
    values: Mapping[str, str], configured_path: str, environ: Mapping[str, str]
) -> CADecision:
    """Probe the build's indexes from here (seconds) and decide its CA bundle."""
    from torchkiln import hostfacts

    configured = CABundle("CA_BUNDLE", configured_path) if configured_path else None
    return decide_ca(
        index_urls(values, hostfacts.default_index_url()),
        configured,
        hostfacts.host_ca_bundles(environ),
        hostfacts.system_ca_bundle(),
        hostfacts.fresh_image_ca_bundle(),
        lambda url, bundle: hostfacts.tls_verdict(url, bundle, environ),
    )
