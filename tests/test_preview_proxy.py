"""Preview links through the real proxy (SPEC §10): the proxied page, the session cookie, `?cs_preview=off`, refused
tokens, previews off, nothing recorded or cached, the Edge API, drafts and time, the ops API that mints links and the
dashboard's links.

The proxy runs in-process (tests/support/proxy_server.py) in front of the Node example origin, on SQLite state in a
temporary folder, with the example rules. Its clock is fixed at T0 (22 Nov 2026, before Black Friday week), and
every token is minted relative to T0: nothing here reads the wall clock to decide anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from support.processes import node_origin
from support.proxy_server import proxy_server
from yarl import URL

from edgeproxy.analytics.impressions import ImpressionRecorder
from edgeproxy.clock import parse_instant
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.serve import make_state
from edgeproxy.runtime.state import ProxyState
from edgeproxy.visitor.preview import PREVIEW_COOKIE, Preview, mint

ROOT = Path(__file__).resolve().parents[1]
P = "6565d3b1a3f0c7b2e1d4a9f0"  # the example project
SECRET = "qa-preview-secret"
OPS = "ops-secret"
T0 = parse_instant("2026-11-22T10:00:00Z")  # the proxy's clock: before Black Friday week (rules/README.md)
BF_WEEK = "2026-11-28T12:00:00Z"  # inside "Black Friday week 2026"
LIFE = 3540  # seconds from T0 to the default token's expiry
DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
UID_COOKIE = "cs-personalize-user-uid"
MANIFEST_COOKIE = "cs-personalize-manifest"
LIVE = ("0", "1", "2", "3", "4", "6", "7", "8", "9")  # the experiences a manifest lists
VARIANTS = {"0": {"0", "1", "2", "4"}, "1": {"0", "1"}, "2": {"0", "1", "2"}, "3": {"0", "1", "2"},
            "4": {"0", "1"}, "5": {"0"}, "6": {"0", "1", "2"}, "7": {"0", "1"}, "8": {"0"}, "9": {"0"}}  # fmt: skip


def clock() -> float:
    return T0


def token(
    *forced: tuple[str, str | None],
    draft: bool = False,
    now: str | None = None,
    issued: float = T0 - 60,
    expires: float = T0 + LIFE,
    secret: str = SECRET,
) -> str:
    preview = Preview(forced=tuple(forced), draft=draft, now=None if now is None else parse_instant(now),
                      expires=expires, issued=issued)  # fmt: skip
    return mint(preview, secret)


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    # Pages a shared cache may keep, so that a preview request for a cached URL shows it bypasses the cache.
    with node_origin("--page-cache-control", "public, s-maxage=600") as url:
        yield url


def config_for(origin: str, tmp: Path, **settings: Any) -> ProxyConfig:
    base = ProxyConfig(origin=origin, rules=str(ROOT / "rules"), state=f"sqlite:///{tmp}/state.sqlite3",
                       preview_secret=SECRET, ops_token=OPS)  # fmt: skip
    return replace(base, **settings)


def state_for(origin: str, tmp: Path, **settings: Any) -> ProxyState:
    return make_state(config_for(origin, tmp, **settings), clock=clock)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def set_cookie(self, name: str) -> str | None:
        found = [v for v in self.headers.getall("Set-Cookie", []) if v.startswith(f"{name}=")]
        assert len(found) <= 1, found
        return found[0] if found else None

    def manifest(self) -> dict[str, str | None]:
        """activeVariants of the manifest cookie sent with this answer."""
        cookie = self.set_cookie(MANIFEST_COOKIE)
        assert cookie is not None, self.headers
        value = cookie[len(MANIFEST_COOKIE) + 1 :].partition("; Path=")[0]
        variants: dict[str, str | None] = json.loads(value)["activeVariants"]
        return variants


def max_age(set_cookie: str) -> int:
    attributes = dict(part.strip().partition("=")[::2] for part in set_cookie.split(";")[1:])
    return int(attributes["Max-Age"])


@dataclass
class Proxy:
    state: ProxyState
    session: aiohttp.ClientSession
    port: int
    origin: str

    async def request(
        self,
        method: str,
        target: str,
        *,
        uid: str | None = "qa-visitor",
        cookies: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        data: str | None = None,
    ) -> Answer:
        """`target` exactly as sent (a bare `cs_preview` stays bare); no cookie jar: only the cookies given."""
        sent = {"User-Agent": DESKTOP, "Accept": "text/html", **(headers or {})}
        jar = ([f"{UID_COOKIE}={uid}"] if uid else []) + list(cookies)
        if jar:
            sent["Cookie"] = "; ".join(jar)
        url = URL(f"http://127.0.0.1:{self.port}{target}", encoded=True)
        async with self.session.request(method, url, headers=sent, data=data, allow_redirects=False) as response:
            return Answer(response.status, response.headers, await response.read())

    async def get(self, target: str, **kwargs: Any) -> Answer:
        return await self.request("GET", target, **kwargs)

    async def echo(self, target: str, **kwargs: Any) -> tuple[Answer, dict[str, Any]]:
        """A request to the origin's /echo: the answer, and the request the origin got."""
        answer = await self.get(target, **kwargs)
        assert answer.status == 200, answer
        return answer, answer.json()

    async def origin_hits(self, path: str) -> int:
        async with self.session.get(f"{self.origin}/_origin/hits") as response:
            hits: dict[str, int] = await response.json()
        return hits.get(path, 0)

    async def ops(self, method: str, name: str, body: Any = None, *, auth: str | None = OPS) -> Answer:
        headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
        data = body if body is None or isinstance(body, str) else json.dumps(body)
        return await self.request(method, f"/_edgeproxy/{name}", uid=None, headers=headers, data=data)

    async def manifest(self, page_url: str = "http://shop.test/", *, uid: str = "qa-visitor",
                       cookies: tuple[str, ...] = ()) -> Answer:  # fmt: skip
        headers = {"X-Project-Uid": P, "X-CS-Personalize-User-Uid": uid, "X-Page-Url": page_url}
        return await self.request("GET", "/_personalize/manifest", uid=None, cookies=cookies, headers=headers)


def run(state: ProxyState, origin: str, scenario: Callable[[Proxy], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running(state, origin) as proxy:
            await scenario(proxy)

    asyncio.run(main())


@asynccontextmanager
async def running(state: ProxyState, origin: str) -> AsyncIterator[Proxy]:
    async with proxy_server(state) as server, aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        assert server.port is not None
        yield Proxy(state, session, server.port, origin)


def preview_cookie(value: str) -> str:
    return f"{PREVIEW_COOKIE}={value}"


def assert_preview_response(answer: Answer) -> None:
    assert answer.headers.getall("Cache-Control") == ["no-store"]
    assert answer.headers.getall("X-Robots-Tag") == ["noindex"]
    assert "X-Edgeproxy-Preview" not in answer.headers


def assert_normal_response(answer: Answer) -> None:
    assert "X-Robots-Tag" not in answer.headers
    assert "X-Edgeproxy-Preview" not in answer.headers


# -- 1, 2: the proxied page and the navigation that follows ------------------------------------------------------------


def test_a_preview_link_forces_its_variants_strips_the_token_and_starts_a_session(origin: str, tmp_path: Path) -> None:
    link = token(("0", "2"), ("1", "0"))

    async def scenario(proxy: Proxy) -> None:
        plain, seen_plain = await proxy.echo("/echo?x=1", headers={"X-Edgeproxy-Preview": "1"})
        assert "x-edgeproxy-preview" not in seen_plain["headers"]  # a visitor cannot claim a preview
        assert_normal_response(plain)
        assert plain.manifest()["0"] is None and plain.manifest()["1"] is None  # what this visitor gets normally
        assert "cs_personalize_0_2" not in seen_plain["headers"]["x-cs-variant-uid"]

        answer, seen = await proxy.echo(f"/echo?x=1&cs_preview={link}", headers={"X-Edgeproxy-Preview": "spoof"})
        assert seen["url"] == "/echo?x=1"
        assert [value for name, value in seen["rawHeaders"] if name.lower() == "x-edgeproxy-preview"] == ["1"]
        aliases = seen["headers"]["x-cs-variant-uid"].split(",")
        assert "cs_personalize_0_2" in aliases and "cs_personalize_1_0" in aliases
        assert {"0_2", "1_0"} <= set(seen["headers"]["x-cs-personalize-variants"].split(","))
        assert link not in json.dumps(seen)  # the origin never sees the token, in the URL or a header

        assert_preview_response(answer)
        assert answer.headers["X-Cache"] == "BYPASS"
        session = answer.set_cookie(PREVIEW_COOKIE)
        assert session is not None and session.startswith(f"{PREVIEW_COOKIE}={link};")
        assert "HttpOnly" in session.split("; ") and "Path=/" in session.split("; ")
        assert max_age(session) == LIFE  # the token's remaining life on the proxy's clock, never more
        manifest = answer.manifest()
        assert manifest["0"] == "2" and manifest["1"] == "0"
        assert {k: v for k, v in manifest.items() if k not in ("0", "1")} == {
            k: v for k, v in plain.manifest().items() if k not in ("0", "1")
        }  # the experiences it does not force decide as they would

    run(state_for(origin, tmp_path), origin, scenario)


def test_the_preview_cookie_keeps_following_navigation_in_preview_and_never_reaches_the_origin(
    origin: str, tmp_path: Path
) -> None:
    link = token(("0", "2"))

    async def scenario(proxy: Proxy) -> None:
        cookies = ("theme=dark", preview_cookie(link), "cart=3")
        answer, seen = await proxy.echo("/echo?page=2", cookies=cookies)
        assert seen["url"] == "/echo?page=2"
        assert seen["headers"]["x-edgeproxy-preview"] == "1"
        assert "cs_personalize_0_2" in seen["headers"]["x-cs-variant-uid"].split(",")
        sent_on = [part.strip() for part in seen["headers"]["cookie"].split(";")]
        assert sent_on == [f"{UID_COOKIE}=qa-visitor", "theme=dark", "cart=3"]
        assert not any(PREVIEW_COOKIE in part for part in sent_on)
        assert_preview_response(answer)
        assert answer.headers["X-Cache"] == "BYPASS"
        assert answer.manifest()["0"] == "2"
        assert answer.set_cookie(PREVIEW_COOKIE) is None  # the session already has its cookie

    run(state_for(origin, tmp_path), origin, scenario)


def test_every_spelling_of_the_parameter_is_stripped_and_https_gets_a_secure_cookie(
    origin: str, tmp_path: Path
) -> None:
    link = token(("0", "2"))

    async def scenario(proxy: Proxy) -> None:
        # The first cs_preview (here percent-encoded) is the token; every other one is removed too.
        answer, seen = await proxy.echo(f"/echo?cs%5Fpreview={link}&y=%20b&cs_preview=junk&z")
        assert seen["url"] == "/echo?y=%20b&z"
        assert seen["headers"]["x-edgeproxy-preview"] == "1"
        assert "X-Edgeproxy-Preview" not in answer.headers
        session = answer.set_cookie(PREVIEW_COOKIE)
        assert session is not None and "Secure" not in session.split("; ")

        secure, _ = await proxy.echo(f"/echo?cs_preview={link}", headers={"X-Forwarded-Proto": "https"})
        session = secure.set_cookie(PREVIEW_COOKIE)
        assert session is not None and "Secure" in session.split("; ")
        ended, _ = await proxy.echo("/echo?cs_preview=off", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in (ended.set_cookie(PREVIEW_COOKIE) or "").split("; ")

        head = await proxy.request("HEAD", f"/?cs_preview={link}")
        assert head.status == 200 and head.body == b""
        assert_preview_response(head)
        assert head.headers["X-Cache"] == "BYPASS"

    run(state_for(origin, tmp_path, trusted_proxies=("127.0.0.1",)), origin, scenario)


def test_cs_preview_off_ends_the_session_with_an_expiring_cookie(origin: str, tmp_path: Path) -> None:
    link = token(("0", "2"))

    async def scenario(proxy: Proxy) -> None:
        plain, seen_plain = await proxy.echo("/echo?x=1")
        answer, seen = await proxy.echo("/echo?x=1&cs_preview=off", cookies=(preview_cookie(link), "theme=dark"))
        assert seen["url"] == "/echo?x=1"
        assert "x-edgeproxy-preview" not in seen["headers"]
        assert PREVIEW_COOKIE not in seen["headers"]["cookie"] and "theme=dark" in seen["headers"]["cookie"]
        assert seen["headers"]["x-cs-personalize-variants"] == seen_plain["headers"]["x-cs-personalize-variants"]
        assert answer.manifest() == plain.manifest()
        assert_normal_response(answer)
        assert "X-Edgeproxy-Preview" not in answer.headers
        ended = answer.set_cookie(PREVIEW_COOKIE)
        assert ended is not None and ended.startswith(f"{PREVIEW_COOKIE}=;") and max_age(ended) == 0

    run(state_for(origin, tmp_path), origin, scenario)


# -- 4, 5: refused tokens, previews off --------------------------------------------------------------------------------


def _tampered() -> str:
    body = token(("0", "1")).partition(".")[0]
    signature = token(("0", "2")).partition(".")[2]
    return f"{body}.{signature}"  # another payload under a real signature


REFUSED = {
    "tampered": (_tampered(), "bad signature"),
    "other secret": (token(("0", "2"), secret="not-our-secret"), "bad signature"),
    "expired": (token(("0", "2"), issued=T0 - 7200, expires=T0 - 1), "expired"),
    "expires now": (token(("0", "2"), issued=T0 - 7200, expires=T0), "expired"),
    "malformed": ("not-a-token", "malformed"),
    "empty": ("", "malformed"),
    "bare": (None, "malformed"),  # `?x=1&cs_preview` without a value
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_url_token_is_ignored_logged_once_and_still_stripped(
    origin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    value, reason = REFUSED[case]
    target = "/echo?x=1&cs_preview" if value is None else f"/echo?x=1&cs_preview={value}"

    async def scenario(proxy: Proxy) -> None:
        plain, seen_plain = await proxy.echo("/echo?x=1")
        caplog.clear()
        answer, seen = await proxy.echo(target)
        lines = [r for r in caplog.records if r.name == "edgeproxy.proxy"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.INFO
        message = lines[0].getMessage()
        assert f"URL token: {reason}" in message
        assert not value or value not in message  # the token itself is not logged

        assert seen["url"] == "/echo?x=1"
        assert "x-edgeproxy-preview" not in seen["headers"]
        assert seen["headers"]["x-cs-personalize-variants"] == seen_plain["headers"]["x-cs-personalize-variants"]
        assert seen["headers"]["x-cs-variant-uid"] == seen_plain["headers"]["x-cs-variant-uid"]
        assert answer.status == 200
        assert answer.headers.getall("X-Edgeproxy-Preview") == ["invalid"]
        assert "X-Robots-Tag" not in answer.headers
        assert answer.manifest() == plain.manifest()
        assert answer.set_cookie(PREVIEW_COOKIE) is None  # no session started, and none to end

        # Decided, counted and logged as the visit it is, on the page without the token.
        assert proxy.state.live.decisions == 2
        assert proxy.state.decision_log is not None
        proxy.state.decision_log.flush()
        logged = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert len(logged) == 2
        assert logged[1]["request"] == logged[0]["request"]
        assert logged[1]["decision"] == logged[0]["decision"]

    log_file = tmp_path / "decisions.jsonl"
    caplog.set_level(logging.INFO, logger="edgeproxy.proxy")
    run(state_for(origin, tmp_path, decision_log=str(log_file)), origin, scenario)


def test_a_tampered_cookie_is_ignored_logged_once_and_ended(
    origin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(proxy: Proxy) -> None:
        plain, seen_plain = await proxy.echo("/echo?x=1")
        caplog.clear()
        answer, seen = await proxy.echo("/echo?x=1", cookies=(preview_cookie(_tampered()), "theme=dark"))
        lines = [r.getMessage() for r in caplog.records if r.name == "edgeproxy.proxy"]
        assert len(lines) == 1 and "cookie: bad signature" in lines[0], lines

        assert "x-edgeproxy-preview" not in seen["headers"]
        assert seen["headers"]["x-cs-personalize-variants"] == seen_plain["headers"]["x-cs-personalize-variants"]
        assert PREVIEW_COOKIE not in seen["headers"]["cookie"] and "theme=dark" in seen["headers"]["cookie"]
        assert answer.headers.getall("X-Edgeproxy-Preview") == ["invalid"]
        assert "X-Robots-Tag" not in answer.headers
        assert answer.manifest() == plain.manifest()
        ended = answer.set_cookie(PREVIEW_COOKIE)
        assert ended is not None and ended.startswith(f"{PREVIEW_COOKIE}=;") and max_age(ended) == 0

    caplog.set_level(logging.INFO, logger="edgeproxy.proxy")
    run(state_for(origin, tmp_path), origin, scenario)


def test_a_refused_url_token_leaves_a_valid_session_cookie_in_force(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy) -> None:
        answer, seen = await proxy.echo(f"/echo?cs_preview={_tampered()}", cookies=(preview_cookie(token(("0", "2"))),))
        assert seen["url"] == "/echo"
        assert seen["headers"]["x-edgeproxy-preview"] == "1"
        assert "cs_personalize_0_2" in seen["headers"]["x-cs-variant-uid"].split(",")
        assert answer.headers.getall("X-Edgeproxy-Preview") == ["invalid"]
        assert answer.headers.getall("X-Robots-Tag") == ["noindex"]
        assert answer.set_cookie(PREVIEW_COOKIE) is None  # the session cookie stays as it is

    run(state_for(origin, tmp_path), origin, scenario)


def test_without_a_preview_secret_cs_preview_is_an_ordinary_parameter(origin: str, tmp_path: Path) -> None:
    link = token(("0", "2"))

    async def scenario(proxy: Proxy) -> None:
        plain, seen_plain = await proxy.echo("/echo?x=1")
        answer, seen = await proxy.echo(f"/echo?x=1&cs_preview={link}", cookies=(preview_cookie(link),))
        assert seen["url"] == f"/echo?x=1&cs_preview={link}"
        assert "x-edgeproxy-preview" not in seen["headers"]
        assert preview_cookie(link) in seen["headers"]["cookie"]  # not the proxy's business either
        assert seen["headers"]["x-cs-personalize-variants"] == seen_plain["headers"]["x-cs-personalize-variants"]
        assert answer.manifest() == plain.manifest() and answer.manifest()["0"] is None
        for name in ("X-Edgeproxy-Preview", "X-Robots-Tag"):
            assert name not in answer.headers
        assert answer.set_cookie(PREVIEW_COOKIE) is None
        assert answer.headers["X-Cache"] == plain.headers["X-Cache"] != "BYPASS"

    run(state_for(origin, tmp_path, preview_secret=""), origin, scenario)


# -- 6: a preview records nothing and never touches the cache ----------------------------------------------------------


def test_preview_requests_record_nothing_and_bypass_the_cache(origin: str, tmp_path: Path) -> None:
    state = state_for(origin, tmp_path, decision_log=str(tmp_path / "decisions.jsonl"), impressions="proxy")
    state.impressions = ImpressionRecorder(state.store, lambda: P, clock=clock)
    db = tmp_path / "state.sqlite3"

    def impressions() -> list[tuple[str, str, str, str]]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT user_uid, experience_short_uid, variant_short_uid, source FROM events "
                                "WHERE type = 'IMPRESSION' ORDER BY id").fetchall()  # fmt: skip
        return [tuple(row) for row in rows]

    def logged() -> list[dict[str, Any]]:
        assert state.decision_log is not None
        state.decision_log.flush()
        text = (tmp_path / "decisions.jsonl").read_text() if (tmp_path / "decisions.jsonl").exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    async def recorded(proxy: Proxy) -> tuple[int, int, int, int, int]:
        assert state.impressions is not None and state.cache is not None
        await state.impressions.flush()
        entries = (await state.cache.store.stats())["entries"]
        return state.live.decisions, len(logged()), len(impressions()), entries, await proxy.origin_hits("/")

    async def scenario(proxy: Proxy) -> None:
        # Visitor A fills the cache for / and is served from it again.
        first = await proxy.get("/", uid="visitor-a")
        assert first.status == 200 and first.headers["X-Cache"] == "MISS"
        again = await proxy.get("/", uid="visitor-a")
        assert again.headers["X-Cache"] == "HIT"
        decisions, lines, stored, entries, hits = await recorded(proxy)
        assert (decisions, lines, entries) == (2, 2, 1) and stored > 0
        active = {k: v for k, v in first.manifest().items() if v is not None}
        assert active  # the A/B tests bucket everyone

        # Visitor B previews exactly A's variants: the same variant set, so the same cache key as A's entry.
        same = token(*active.items())
        other = token(("0", "2"), ("1", "0"))
        previews = [
            await proxy.get(f"/?cs_preview={same}", uid="visitor-b"),
            await proxy.get("/", uid="visitor-b", cookies=(preview_cookie(same),)),  # the cached URL itself
            await proxy.get("/", uid="visitor-b", cookies=(preview_cookie(other),)),
            await proxy.get(f"/products/trail-runner-shoes?cs_preview={other}", uid="visitor-b"),
        ]
        for answer in previews:
            assert answer.status == 200
            assert answer.headers["X-Cache"] == "BYPASS"
            assert_preview_response(answer)
            assert "x-cs-applied-variants" not in answer.headers
        assert {k: v for k, v in previews[1].manifest().items() if v is not None} == active
        assert previews[2].manifest()["0"] == "2"
        # Every preview went to the origin (3 for /), and nothing was counted, logged, recorded or stored.
        assert await recorded(proxy) == (decisions, lines, stored, entries, hits + 3)
        assert all(line["request"]["userUid"] == "visitor-a" for line in logged())

        # The same visitor without a preview is counted, logged, recorded and cached as usual.
        plain = await proxy.get("/products/trail-runner-shoes", uid="visitor-b")
        assert plain.headers["X-Cache"] == "MISS"
        after = await recorded(proxy)
        assert after[0] == decisions + 1 and after[1] == lines + 1 and after[3] == entries + 1
        assert after[2] > stored
        assert {row[0] for row in impressions()[stored:]} == {"visitor-b"}
        assert logged()[-1]["request"]["userUid"] == "visitor-b"

    run(state, origin, scenario)


# -- 7: the Edge API ---------------------------------------------------------------------------------------------------


def test_the_edge_api_manifest_honours_a_token_in_the_page_url_or_the_cookie(
    origin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link = token(("0", "2"), ("7", None))

    async def scenario(proxy: Proxy) -> None:
        plain = await proxy.manifest()
        assert plain.status == 200
        normal = plain.json()["activeVariants"]
        assert normal["0"] is None and normal["7"] is not None
        assert "X-Robots-Tag" not in plain.headers and "X-Edgeproxy-Preview" not in plain.headers
        counted = proxy.state.live.decisions
        assert counted == 1

        for answer in (
            await proxy.manifest(f"http://shop.test/?cs_preview={link}"),
            await proxy.manifest(f"http://shop.test/?a=1&cs_preview={link}#top"),
            await proxy.manifest("http://shop.test/", cookies=(preview_cookie(link),)),
        ):
            assert answer.status == 200
            assert_preview_response(answer)
            body = answer.json()["activeVariants"]
            assert body["0"] == "2" and body["7"] is None
            assert {k: v for k, v in body.items() if k not in ("0", "7")} == {
                k: v for k, v in normal.items() if k not in ("0", "7")
            }
        assert proxy.state.live.decisions == counted  # previews are not counted

        caplog.clear()
        refused = await proxy.manifest(f"http://shop.test/?cs_preview={_tampered()}")
        assert refused.status == 200
        assert refused.headers.getall("X-Edgeproxy-Preview") == ["invalid"]
        assert "X-Robots-Tag" not in refused.headers
        assert refused.json()["activeVariants"] == normal
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("edgeproxy")]
        assert len(lines) == 1 and "bad signature" in lines[0], lines
        assert proxy.state.live.decisions == counted + 1

    caplog.set_level(logging.INFO, logger="edgeproxy")
    run(state_for(origin, tmp_path), origin, scenario)


def test_the_edge_api_page_url_token_reads_the_page_without_it(origin: str, tmp_path: Path) -> None:
    """The decision reads the page URL with the token removed: its other parameters still count."""

    async def scenario(proxy: Proxy) -> None:
        campaign = await proxy.manifest(f"http://shop.test/?utm_campaign=bf&cs_preview={token(('0', '2'))}")
        assert campaign.json()["activeVariants"]["1"] == "0"  # Black Friday campaign link, before the cutoff
        assert campaign.headers["X-Robots-Tag"] == "noindex"

    run(state_for(origin, tmp_path), origin, scenario)


def test_sdk_events_of_a_preview_session_are_answered_but_not_stored(origin: str, tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite3"
    events = json.dumps([{"type": "IMPRESSION", "experienceShortUid": "0", "variantShortUid": "2"},
                         {"type": "EVENT", "eventKey": "purchase"}])  # fmt: skip

    def rows() -> int:
        with sqlite3.connect(db) as conn:
            count: int = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return count

    async def post(proxy: Proxy, *cookies: str) -> Answer:
        headers = {"X-Project-Uid": P, "X-CS-Personalize-User-Uid": "qa-visitor"}
        return await proxy.request("POST", "/_personalize/events", uid=None, cookies=cookies, headers=headers,
                                   data=events)  # fmt: skip

    async def scenario(proxy: Proxy) -> None:
        previewing = await post(proxy, preview_cookie(token(("0", "2"))), "theme=dark")
        assert previewing.status == 200 and previewing.json() == {"accepted": 2}
        assert rows() == 0
        expired = await post(proxy, preview_cookie(token(("0", "2"), issued=T0 - 7200, expires=T0 - 1)))
        assert expired.status == 200 and rows() == 2  # an expired preview is a visit like any other
        plain = await post(proxy)
        assert plain.status == 200 and plain.json() == {"accepted": 2}
        assert rows() == 4

    run(state_for(origin, tmp_path), origin, scenario)


# -- 8: drafts and time ------------------------------------------------------------------------------------------------


def test_a_draft_token_shows_a_draft_only_experience(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy) -> None:
        drafted = await proxy.manifest(cookies=(preview_cookie(token(("5", "0"), draft=True)),))
        assert drafted.json()["activeVariants"]["5"] == "0"
        undrafted = await proxy.manifest(cookies=(preview_cookie(token(("5", "0"))),))
        assert "5" not in undrafted.json()["activeVariants"]
        assert "5" not in (await proxy.manifest()).json()["activeVariants"]

        page = await proxy.get(f"/?cs_preview={token(('5', '0'), draft=True)}")
        assert page.manifest()["5"] == "0"
        _, seen = await proxy.echo("/echo", cookies=(preview_cookie(token(("5", "0"), draft=True)),))
        assert "5_0" in seen["headers"]["x-cs-personalize-variants"].split(",")
        _, seen = await proxy.echo("/echo", cookies=(preview_cookie(token(("5", "0"))),))
        assert "5_0" not in seen["headers"]["x-cs-personalize-variants"].split(",")

    run(state_for(origin, tmp_path), origin, scenario)


def test_a_token_with_a_time_opens_the_black_friday_window(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy) -> None:
        timed = token(now=BF_WEEK)  # nothing forced: only the time differs
        assert (await proxy.manifest()).json()["activeVariants"]["1"] is None  # the proxy's clock: 22 Nov
        opened = await proxy.manifest(cookies=(preview_cookie(timed),))
        assert opened.json()["activeVariants"]["1"] == "1"  # BF week countdown, for a human visitor
        page = await proxy.get(f"/?cs_preview={timed}")
        assert page.manifest()["1"] == "1"
        assert (await proxy.get("/")).manifest()["1"] is None
        # The same visitor, with the time but a bot's User-Agent: the countdown excludes bots, so the time is
        # the only thing the token changed for a human.
        bot = await proxy.get(
            f"/?cs_preview={timed}", headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}
        )
        assert bot.manifest()["1"] is None

    run(state_for(origin, tmp_path), origin, scenario)


# -- 9: the ops API that mints links -----------------------------------------------------------------------------------


def test_the_ops_api_mints_a_link_that_works_on_the_proxy(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy) -> None:
        minted = await proxy.ops("POST", "preview-links", {"url": "/echo?x=1", "set": {"0": "2"}, "ttl": "1h"})
        assert minted.status == 200, minted.body
        body = minted.json()
        assert set(body) == {"link", "expires"}
        assert body["expires"] == "2026-11-22T11:00:00Z"  # the proxy's clock + 1h
        assert body["link"].startswith("/echo?x=1&cs_preview=")
        answer, seen = await proxy.echo(body["link"])
        assert seen["url"] == "/echo?x=1"
        assert seen["headers"]["x-edgeproxy-preview"] == "1"
        assert "cs_personalize_0_2" in seen["headers"]["x-cs-variant-uid"].split(",")
        session = answer.set_cookie(PREVIEW_COOKIE)
        assert session is not None and max_age(session) == 3600

        absolute = await proxy.ops("POST", "preview-links", {
            "url": "https://shop.example/p?q=1#f", "set": {"5": "0"}, "exclude": ["1"], "draft": True,
            "now": BF_WEEK, "ttl": 600,
        })  # fmt: skip
        assert absolute.status == 200, absolute.body
        link = absolute.json()["link"]
        assert link.startswith("https://shop.example/p?q=1&cs_preview=") and link.endswith("#f")
        assert absolute.json()["expires"] == "2026-11-22T10:10:00Z"
        minted_token = link.partition("cs_preview=")[2].partition("#")[0]
        manifest = (await proxy.manifest(cookies=(preview_cookie(minted_token),))).json()["activeVariants"]
        assert manifest["5"] == "0" and manifest["1"] is None

        timed = await proxy.ops("POST", "preview-links", {"url": "/", "now": BF_WEEK})
        timed_token = timed.json()["link"].partition("cs_preview=")[2]
        assert (await proxy.manifest(cookies=(preview_cookie(timed_token),))).json()["activeVariants"]["1"] == "1"

    run(state_for(origin, tmp_path), origin, scenario)


BAD_LINK_REQUESTS = [
    ({"url": "/", "set": {"99": "0"}}, "set.99"),
    ({"url": "/", "set": {"0": "3"}}, "set.0"),  # deleted from the live version
    ({"url": "/", "set": {"0": "99"}}, "set.0"),
    ({"url": "/", "set": {"5": "0"}}, "set.5"),  # draft-only, without "draft": true
    ({"url": "/", "exclude": ["99"]}, "exclude.99"),
    ({"url": "/", "set": {"0": "2"}, "ttl": "8d"}, "ttl"),
    ({"url": "/", "ttl": "soon"}, "ttl"),
    ({"url": "/", "ttl": 0}, "ttl"),
    ({"url": "/", "now": "next friday"}, "now"),
    ({"url": "/", "now": 1764331200}, "now"),
    ({"url": "/", "draft": "yes"}, "draft"),
    ({"url": "/", "color": "red"}, "color"),
    ({"set": {"0": "2"}}, "url"),
    ({"url": "ftp://shop.example/"}, "url"),
    ({"url": "/", "set": {"0": 2}}, "set"),
    ({"url": "/", "set": {"0=1": "2"}}, "set"),
    ({"url": "/", "exclude": "1"}, "exclude"),
    ({"url": "/", "set": []}, "set"),  # empty, but not an object
    ({"url": "/", "set": ""}, "set"),
    ({"url": "/", "set": False}, "set"),
    ({"url": "/", "exclude": {}}, "exclude"),  # empty, but not an array
    ({"url": "/", "exclude": 0}, "exclude"),
    ([{"url": "/"}], "$"),
    ('"/"', "$"),
]  # fmt: skip


def test_the_ops_api_refuses_bad_link_requests_naming_the_field(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy) -> None:
        for body, field in BAD_LINK_REQUESTS:
            answer = await proxy.ops("POST", "preview-links", body)
            assert answer.status == 400, (body, answer.body)
            error = answer.json()
            assert error["error"] == "invalid_request" and error["field"] == field, (body, error)
            assert error["message"]
        not_json = await proxy.ops("POST", "preview-links", "{nope")
        assert not_json.status == 400 and not_json.json()["error"] == "invalid_json"
        drafted = await proxy.ops("POST", "preview-links", {"url": "/", "set": {"5": "0"}, "draft": True})
        assert drafted.status == 200

    run(state_for(origin, tmp_path), origin, scenario)


def test_the_ops_api_needs_the_ops_token_and_previews_on(origin: str, tmp_path: Path) -> None:
    body = {"url": "/", "set": {"0": "2"}}

    async def guarded(proxy: Proxy) -> None:
        for auth in (None, "wrong-token"):
            refused = await proxy.ops("POST", "preview-links", body, auth=auth)
            assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        by_header = await proxy.request("POST", "/_edgeproxy/preview-links", uid=None,
                                        headers={"X-Edgeproxy-Token": OPS}, data=json.dumps(body))  # fmt: skip
        assert by_header.status == 200
        assert (await proxy.ops("GET", "preview-links")).status == 405

    async def off(proxy: Proxy) -> None:
        assert (await proxy.ops("POST", "preview-links", body)).status == 403

    async def no_previews(proxy: Proxy) -> None:
        answer = await proxy.ops("POST", "preview-links", body)
        assert answer.status == 409 and answer.json()["error"] == "previews_off"
        assert (await proxy.ops("POST", "preview-links", body, auth=None)).status == 401

    run(state_for(origin, tmp_path / "guarded"), origin, guarded)
    run(state_for(origin, tmp_path / "off", ops_token=""), origin, off)
    run(state_for(origin, tmp_path / "no-previews", preview_secret=""), origin, no_previews)


# -- 10: the dashboard's links -----------------------------------------------------------------------------------------


def test_the_dashboard_lists_a_working_link_per_variant(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy) -> None:
        answer = await proxy.ops("GET", "dashboard/data.json")
        assert answer.status == 200, answer.body
        previews = answer.json()["previews"]
        assert isinstance(previews, list)
        live = {item["shortUid"]: item for item in previews if not item["draft"]}
        drafts = {item["shortUid"]: item for item in previews if item["draft"]}
        assert sorted(live) == sorted(LIVE)
        assert "5" in drafts and "5" not in live
        assert len(previews) == len(live) + len(drafts)  # each experience once per version kind
        decisions = proxy.state.live.decisions
        for item in previews:
            experience = item["shortUid"]
            assert {v["shortUid"] for v in item["variants"]} == VARIANTS[experience], item
            for variant in item["variants"]:
                assert variant["name"]
                link = variant["link"]
                assert link.startswith("/?cs_preview=")
                page = await proxy.get(link, uid=f"dash-{experience}-{variant['shortUid']}")
                assert page.status == 200
                assert_preview_response(page)
                assert page.manifest()[experience] == variant["shortUid"], (item, variant)
                assert page.set_cookie(PREVIEW_COOKIE) is not None
        assert proxy.state.live.decisions == decisions

    run(state_for(origin, tmp_path), origin, scenario)


def test_the_dashboard_has_no_previews_when_they_are_off(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy) -> None:
        answer = await proxy.ops("GET", "dashboard/data.json")
        assert answer.status == 200
        data = answer.json()
        assert "previews" in data and data["previews"] is None

    run(state_for(origin, tmp_path, preview_secret=""), origin, scenario)
