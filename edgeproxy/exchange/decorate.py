"""What the browser gets on top of the origin's response: end-to-end headers, the visitor's cookies, no-store on
personalized HTML, X-Cache, impressions recorded and the debug explanation header (contract §6, §7)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy.analytics.impressions import ImpressionRecorder
from edgeproxy.engine.decide import Manifest
from edgeproxy.http.headers import end_to_end, removal_set
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.visitor.identity import SetCookies

# Response headers meant for caches like us, not for browsers (Fastly semantics).
SURROGATE_HEADERS = frozenset({"surrogate-key", "surrogate-control"})


@dataclass(slots=True)
class ResponseHook:
    """Runs as a personalized response's headers go out: records its impressions (see impressions.py), adds the
    token-protected `X-Edgeproxy-Explain` debug header when it was asked for, and the preview's headers
    (`headers`: no-store and noindex for a preview, `X-Edgeproxy-Preview: invalid` for a refused token)."""

    recorder: ImpressionRecorder | None
    manifest: Manifest
    server_side: bool
    explain: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __call__(self, headers: CIMultiDict[str], applied: str | None) -> None:
        for name, value in self.headers:
            headers[name] = value
        if self.recorder is not None:
            if applied:
                self.recorder.confirmed(self.manifest.user_uid, applied)
            if self.server_side and headers.get("Content-Type", "").lower().startswith("text/html"):
                self.recorder.served(self.manifest)
        if self.explain is not None:
            headers["X-Edgeproxy-Explain"] = self.explain


def response_hook(
    recorder: ImpressionRecorder | None,
    config: ProxyConfig,
    manifest: Manifest,
    explain: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> ResponseHook | None:
    if recorder is None and explain is None and not headers:
        return None
    return ResponseHook(recorder, manifest, config.impressions == "proxy", explain, headers)


@functools.cache
def _response_removed(applied_variants_header: str) -> frozenset[str]:
    return removal_set(*SURROGATE_HEADERS, applied_variants_header)  # a pure function: computed once per name


@dataclass(frozen=True, slots=True)
class ClientBase:
    """An origin response's headers as every browser gets them; the per-request part is added by `finish`.
    The response cache keeps one per stored entry, so a hit copies it instead of rebuilding it."""

    headers: CIMultiDict[str]  # end-to-end, without surrogate headers and the applied-variants report
    applied: str | None  # the origin's applied-variants report (origin-confirmed impressions)
    html: bool
    applied_header: str  # the configured name it was read from

    @classmethod
    def of(cls, origin_headers: CIMultiDict[str] | CIMultiDictProxy[str], config: ProxyConfig) -> ClientBase:
        name = config.applied_variants_header
        headers = end_to_end(origin_headers, _response_removed(name))
        html = headers.get("Content-Type", "").lower().startswith("text/html")
        return cls(headers, origin_headers.get(name), html, name)

    def finish(
        self,
        headers: CIMultiDict[str],
        cookies: SetCookies,
        personalized: bool,
        config: ProxyConfig,
        x_cache: str | None = None,
        impressions: ResponseHook | None = None,
    ) -> None:
        """Add this request's part to `headers` (a copy of `self.headers`): impressions and the debug header,
        our cookies, no-store on personalized HTML, X-Cache."""
        if impressions is not None:
            impressions(headers, self.applied)
        for value in cookies.values:
            headers.add("Set-Cookie", value)
        if personalized and self.html and config.no_store_personalized_html:
            headers["Cache-Control"] = "no-store"  # contract §7: personalized HTML is never cached downstream
        if x_cache is not None:
            headers["X-Cache"] = x_cache


def client_headers(
    origin_headers: CIMultiDict[str] | CIMultiDictProxy[str],
    cookies: SetCookies,
    personalized: bool,
    config: ProxyConfig,
    x_cache: str | None = None,
    impressions: ResponseHook | None = None,
) -> CIMultiDict[str]:
    """What the browser gets: end-to-end origin headers, our cookies, no-store on personalized HTML.
    The origin's applied-variants report is recorded (origin-confirmed impressions) and stripped."""
    base = ClientBase.of(origin_headers, config)
    base.finish(base.headers, cookies, personalized, config, x_cache, impressions)
    return base.headers
