"""Fuzzing (hypothesis, bounded for CI): the request-context parser and the Edge API bodies.

Any input either works or is rejected with our own error type / a 4xx; nothing else escapes.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.engine import RequestDescriptionError, context_from_description
from edgeproxy.engine.context import parse_cookie_header, parse_pipe_set
from edgeproxy.files.snapshot_file import load_snapshot

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = load_snapshot(ROOT / "rules")
PROJECT = SNAPSHOT.project.uid

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=12)  # fmt: skip
header_names = st.sampled_from(["User-Agent", "Referer", "Cookie", "X-Live-Attributes", "X-Forwarded-For",
                                "X-Page-Url", "X-CS-Personalize-User-Uid", "CF-IPCountry", "X-Other"])  # fmt: skip
descriptions = st.fixed_dictionaries(
    {},
    optional={
        "url": st.text(max_size=60) | json_values,
        "headers": st.dictionaries(header_names, st.text(max_size=80) | json_values, max_size=6) | json_values,
        "userUid": st.text(max_size=40) | json_values,
        "ip": st.text(max_size=40) | st.sampled_from(["81.2.69.160", "::1", "999.0.0.1"]) | json_values,
        "geo": st.dictionaries(st.sampled_from(["country", "region", "city"]), json_scalars) | json_values,
        "liveAttributes": st.dictionaries(st.text(max_size=12), json_values, max_size=5) | json_values,
        "storedAttributes": st.dictionaries(st.text(max_size=12), json_values, max_size=5) | json_values,
        "now": st.text(max_size=30) | st.sampled_from(["2026-11-27T00:00:00Z", "2026-13-01"]) | json_values,
        "tags": st.lists(st.text(max_size=20), max_size=3) | json_values,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descriptions | json_values)
def test_any_description_decides_or_is_rejected_with_a_field_error(description: Any) -> None:
    try:
        described = context_from_description(description, clock=time.time, new_uid=lambda: "fuzz")
    except RequestDescriptionError as exc:
        assert exc.field
        return
    manifest = SNAPSHOT.decide(described.context, described.tags)
    json.dumps(manifest.to_dict())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_cookie_and_pipe_parsers_accept_any_text(text: str) -> None:
    cookies = parse_cookie_header(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cookies.items())
    assert all(isinstance(item, str) and item for item in parse_pipe_set(text))


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["IMPRESSION", "EVENT", "X"])},
             optional={"experienceShortUid": json_scalars, "variantShortUid": json_scalars,
                       "eventKey": json_scalars}), max_size=5).map(lambda v: json.dumps(v).encode()),
)  # fmt: skip
endpoints = st.sampled_from([("POST", "/events"), ("PATCH", "/user-attributes"),
                             ("POST", "/user-attributes/actions/merge"), ("GET", "/manifest")])  # fmt: skip
edge_headers = st.fixed_dictionaries(
    {"X-Project-Uid": st.sampled_from([PROJECT, "", "nope"])},
    optional={"X-CS-Personalize-User-Uid": st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                                   max_size=20),
              "X-Live-Attributes": st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
              | json_values.map(json.dumps).filter(lambda t: t.isascii() and t.isprintable())},
)  # fmt: skip


def test_edge_api_bodies_never_get_a_5xx(tmp_path: Path) -> None:
    from support.proxy_server import proxy_client

    from edgeproxy.runtime.config import load_config
    from edgeproxy.runtime.serve import make_state

    config = load_config(None, {}, {"origin": "http://127.0.0.1:9", "rules": str(ROOT / "rules"),
                                    "state": f"sqlite:///{tmp_path}/fuzz.db"})  # fmt: skip
    state = make_state(config)
    statuses: list[int] = []

    async def main() -> None:
        async with proxy_client(state) as client:

            @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
            @given(endpoints, edge_headers, bodies)
            def one(endpoint: tuple[str, str], headers: dict[str, str], body: bytes) -> None:
                method, path = endpoint

                async def call() -> int:
                    reply = await client.request(method, "/_personalize" + path, headers=headers, data=body)
                    await reply.read()
                    return reply.status

                status = asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)
                statuses.append(status)
                assert status < 500, (method, path, headers, body[:80])

            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, one)

    asyncio.run(main())
    assert statuses and all(s < 500 for s in statuses)
