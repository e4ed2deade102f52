"""Preview tokens (issue 17): signed, short-lived, never trusted when tampered with, and never an exception on what a
visitor sends; the link and cookie they travel in; `edgeproxy preview-link` as a user runs it. Every instant is
fixed here: no test reads the wall clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.clock import parse_instant
from edgeproxy.runtime.config import FIELDS, ConfigError, load_config, read_settings
from edgeproxy.visitor.preview import (
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    MAX_TOKEN_CHARS,
    NO_SECRET,
    PREVIEW_COOKIE,
    PREVIEW_PARAM,
    TOO_LONG_LIVED,
    Invalid,
    Preview,
    end_cookie,
    mint,
    parse_ttl,
    preview_link,
    session_cookie,
    strip_preview_param,
    verify,
)

SECRET = "correct horse battery staple"
T0 = parse_instant("2026-11-22T10:00:00Z")  # the mint time of the tokens below
HOUR = 3600.0
DAY = 86_400.0
PREVIEW = Preview(forced=(("0", "2"), ("1", None)), draft=True, now=parse_instant("2026-11-28T12:00:00Z"),
                  expires=T0 + HOUR, issued=T0)  # fmt: skip


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed(payload: Any, secret: str = SECRET, raw: str | None = None) -> str:
    """A token in the documented format built by hand: what any holder of the secret could sign."""
    body = (raw if raw is not None else json.dumps(payload, sort_keys=True, separators=(",", ":"))).encode()
    return f"{b64(body)}.{b64(hmac.new(secret.encode(), body, hashlib.sha256).digest())}"


def payload(**changes: Any) -> dict[str, Any]:
    base = {"d": False, "exp": T0 + HOUR, "f": [["0", "2"]], "iat": T0, "n": None, "v": 1}
    base.update(changes)
    return base


# -- tokens ---------------------------------------------------------------------------------------------------------


def test_a_minted_token_verifies_to_the_same_preview_until_it_expires() -> None:
    token = mint(PREVIEW, SECRET)
    assert verify(token, SECRET, T0) == PREVIEW
    assert verify(token, SECRET.encode(), T0 + HOUR - 0.001) == PREVIEW  # bytes and str secrets are the same key
    plain = Preview(forced=(), draft=False, now=None, expires=T0 + 0.25, issued=T0 + 0.125)
    assert verify(mint(plain, SECRET), SECRET, T0) == plain


def test_the_token_is_compact_url_safe_and_carries_the_documented_payload() -> None:
    token = mint(PREVIEW, SECRET)
    assert len(token) < 300 and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    body, signature = token.split(".")
    raw = unb64(body)
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()  # sorted, no spaces
    assert json.loads(raw) == {"d": True, "exp": T0 + HOUR, "f": [["0", "2"], ["1", None]], "iat": T0,
                               "n": parse_instant("2026-11-28T12:00:00Z"), "v": 1}  # fmt: skip
    assert unb64(signature) == hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()
    assert signed(json.loads(raw)) == token  # the format is the one documented, nothing more


def test_a_tampered_payload_or_signature_or_another_secret_is_a_bad_signature() -> None:
    token = mint(PREVIEW, SECRET)
    body, signature = token.split(".")
    forged = json.loads(unb64(body))
    forged["f"] = [["0", "3"]]
    assert verify(f"{b64(json.dumps(forged, sort_keys=True, separators=(',', ':')).encode())}.{signature}", SECRET,
                  T0) == Invalid(BAD_SIGNATURE)  # fmt: skip
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    assert verify(f"{body}.{flipped}", SECRET, T0) == Invalid(BAD_SIGNATURE)
    assert verify(token, SECRET + "!", T0) == Invalid(BAD_SIGNATURE)
    assert verify(signed(payload(), secret="another"), SECRET, T0) == Invalid(BAD_SIGNATURE)


def test_an_expired_token_is_refused_from_its_expiry_on() -> None:
    token = mint(PREVIEW, SECRET)
    assert verify(token, SECRET, T0 + HOUR) == Invalid(EXPIRED)
    assert verify(token, SECRET, T0 + 30 * DAY) == Invalid(EXPIRED)


def test_a_token_living_over_seven_days_is_refused_even_when_signed() -> None:
    assert verify(signed(payload(exp=T0 + 7 * DAY)), SECRET, T0) != Invalid(TOO_LONG_LIVED)
    assert verify(signed(payload(exp=T0 + 7 * DAY + 1)), SECRET, T0) == Invalid(TOO_LONG_LIVED)
    # A mint time set in the future does not stretch the life of a token either.
    future = payload(iat=T0 + 300 * DAY, exp=T0 + 300 * DAY + HOUR)
    assert verify(signed(future), SECRET, T0) == Invalid(TOO_LONG_LIVED)


@pytest.mark.parametrize(
    "token",
    [
        "", ".", "..", "off", "a.b", "!!!.???", "abc", "é.é", "\x00.\x00", " " + "A" * 43,
        "A" * (MAX_TOKEN_CHARS + 1),
        "A" * 100_000 + "." + "A" * 43,
        "eyJ9.eyJ9.eyJ9",
    ],
)  # fmt: skip
def test_garbage_and_huge_tokens_are_malformed(token: str) -> None:
    assert verify(token, SECRET, T0) == Invalid(MALFORMED)


def test_truncated_and_re_spelled_tokens_are_malformed() -> None:
    token = mint(PREVIEW, SECRET)
    body, signature = token.split(".")
    for broken in (token[:-1], token[:-4], token[:10], body, f"{body}.", f".{signature}", token + "=",
                   f"{body}.{signature}.{signature}", f"{body}=.{signature}", f"{body}.{signature[:-1]}+"):  # fmt: skip
        assert verify(broken, SECRET, T0) == Invalid(MALFORMED), broken
    # The same signature bytes in a non-canonical spelling (spare low bits set) are not the token.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(signature[-1])
    respelled = signature[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1]
    assert unb64(respelled) == unb64(signature)
    assert verify(f"{body}.{respelled}", SECRET, T0) == Invalid(MALFORMED)


@pytest.mark.parametrize(
    "signed_payload",
    [
        payload(v=2), payload(v=True), {k: v for k, v in payload().items() if k != "n"}, payload(extra=1),
        payload(f=[["0_x", "2"], ["a b", "1"]]), payload(f=[["0", "2"], ["0", "3"]]), payload(f=[["0"]]),
        payload(f=[[0, "2"]]), payload(f=[["0", 2]]), payload(f=[["x" * 65, "1"]]), payload(f=[["", "1"]]),
        payload(f=[[str(n), "1"] for n in range(65)]), payload(f={"0": "2"}), payload(d="yes"), payload(d=1),
        payload(exp=True), payload(exp="soon"), payload(exp=T0), payload(exp=T0 - 1), payload(n="2026-11-28"),
        payload(n=1e300), payload(iat=10**400), [1, 2], "text", None,
    ],
)  # fmt: skip
def test_signed_payloads_of_the_wrong_shape_are_malformed(signed_payload: Any) -> None:
    assert verify(signed(signed_payload), SECRET, T0) == Invalid(MALFORMED)


@pytest.mark.parametrize(
    "raw", ['{"d":false,"exp":NaN}', '{"exp":-Infinity}', "[" * 1500, "[" * 600 + "]" * 600, "{", "\udcff", ""]
)
def test_signed_bodies_that_are_not_json_are_malformed(raw: str) -> None:
    body = raw.encode("utf-8", "surrogateescape")
    token = f"{b64(body)}.{b64(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())}"
    assert len(token) <= MAX_TOKEN_CHARS
    assert verify(token, SECRET, T0) == Invalid(MALFORMED)


def test_without_a_secret_nothing_verifies_and_nothing_is_minted() -> None:
    assert verify(signed(payload(), secret=""), "", T0) == Invalid(NO_SECRET)
    assert verify(mint(PREVIEW, SECRET), b"", T0) == Invalid(NO_SECRET)
    with pytest.raises(ValueError, match="secret is empty"):
        mint(PREVIEW, "")


@pytest.mark.parametrize(
    ("preview", "message"),
    [
        (Preview(forced=(("a b", "1"),), draft=False, now=None, expires=T0 + 1, issued=T0), "experience 'a b'"),
        (Preview(forced=(("0", ""),), draft=False, now=None, expires=T0 + 1, issued=T0), "variant ''"),
        (Preview(forced=(("0", "1"), ("0", None)), draft=False, now=None, expires=T0 + 1, issued=T0), "twice"),
        (Preview(forced=tuple((str(n), "1") for n in range(65)), draft=False, now=None, expires=T0 + 1, issued=T0),
         "at most 64"),
        (Preview(forced=(), draft=False, now=None, expires=T0 + 7 * DAY + 1, issued=T0), "at most 7 days"),
        (Preview(forced=(), draft=False, now=None, expires=T0, issued=T0), "not after issued"),
        (Preview(forced=(), draft=False, now=float("nan"), expires=T0 + 1, issued=T0), "now is not an instant"),
        (Preview(forced=tuple(("e" * 60 + str(n), "v" * 64) for n in range(20)), draft=False, now=None,
                 expires=T0 + 1, issued=T0), "force fewer experiences"),
    ],
)  # fmt: skip
def test_mint_refuses_what_verify_would_refuse(preview: Preview, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mint(preview, SECRET)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=3000),
    st.builds(lambda a, b: f"{a}.{b}", st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
              st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ .", max_size=60)),
    st.binary(max_size=300).map(lambda raw: f"{b64(raw)}.{b64(hashlib.sha256(raw).digest())}"),
))  # fmt: skip
def test_random_text_is_never_a_preview_and_never_raises(text: str) -> None:
    result = verify(text, SECRET, T0)
    assert isinstance(result, Invalid) and result.reason in (MALFORMED, BAD_SIGNATURE)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["d", "exp", "f", "iat", "n", "v"]),
                                                                 inner, max_size=6),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(JSON, st.dictionaries(st.sampled_from(["d", "exp", "f", "iat", "n", "v"]), JSON, max_size=3))
def test_any_signed_json_verifies_or_is_invalid_and_never_raises(anything: Any, changes: dict[str, Any]) -> None:
    for body in (anything, payload(**changes)):
        result = verify(signed(body), SECRET, T0)
        assert isinstance(result, Preview) or result.reason in (MALFORMED, EXPIRED, TOO_LONG_LIVED)


# -- the link, the query and the cookie -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://shop.example/p", "https://shop.example/p?cs_preview=T.S"),
        ("https://shop.example", "https://shop.example/?cs_preview=T.S"),
        ("http://127.0.0.1:8080/p?q=a%20b&x=1+2&e=#top", "http://127.0.0.1:8080/p?q=a%20b&x=1+2&e=&cs_preview=T.S#top"),
        ("https://s.example/p?cs_preview=old&a=1&cs_preview=older", "https://s.example/p?a=1&cs_preview=T.S"),
        ("https://s.example/p?cs%5Fpreview=old&b=%E2%82%AC", "https://s.example/p?b=%E2%82%AC&cs_preview=T.S"),
        ("HTTPS://S.example/A?", "https://S.example/A?cs_preview=T.S"),
    ],
)
def test_preview_link_adds_or_replaces_the_token_and_keeps_the_rest(url: str, link: str) -> None:
    assert preview_link(url, "T.S") == link


@pytest.mark.parametrize("url", ["ftp://shop.example/p", "//shop.example/p", "shop.example/p", "https:///p", "https://x:99999/"])
def test_preview_link_needs_an_http_url_with_a_host(url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        preview_link(url, "T.S")


def test_preview_link_to_a_path_on_this_site_for_the_dashboard() -> None:
    assert preview_link("/p?a=1&cs_preview=old#top", "T.S") == "/p?a=1&cs_preview=T.S#top"


def test_preview_link_refuses_a_token_that_would_break_the_url() -> None:
    for token in ("", "a&b=c", "a#b", "a b"):
        with pytest.raises(ValueError, match="not a preview token"):
            preview_link("https://shop.example/", token)


@pytest.mark.parametrize(
    ("query", "kept", "found"),
    [
        ("", "", None),
        ("a=1&b=2", "a=1&b=2", None),
        ("a=1&cs_preview=T.S&b=%20x+y", "a=1&b=%20x+y", "T.S"),
        ("cs_preview=first&x=1&cs_preview=second", "x=1", "first"),
        ("cs%5Fpreview=T&cs_preview=U", "", "T"),
        ("cs_preview=a%2Eb", "", "a.b"),
        ("cs_preview", "", ""),
        ("cs_preview=off&a=1", "a=1", "off"),
        ("not_cs_preview=1&cs_previewx=2&CS_PREVIEW=3", "not_cs_preview=1&cs_previewx=2&CS_PREVIEW=3", None),
        ("a=1&&b=%zz&cs_preview=T", "a=1&&b=%zz", "T"),
    ],
)
def test_strip_preview_param_removes_every_one_and_returns_the_first(query: str, kept: str, found: str | None) -> None:
    assert strip_preview_param(query) == (kept, found)


def test_a_link_round_trips_through_the_query_the_proxy_sees() -> None:
    token = mint(PREVIEW, SECRET)
    link = preview_link("https://shop.example/p?utm_campaign=bf#x", token)
    kept, found = strip_preview_param(urlsplit(link).query)
    assert kept == "utm_campaign=bf" and found == token
    assert verify(found, SECRET, T0 + 1) == PREVIEW


def test_session_cookie_lasts_until_the_token_expires_and_end_cookie_deletes_it() -> None:
    assert PREVIEW_COOKIE == "cs-personalize-preview" and PREVIEW_PARAM == "cs_preview"
    assert session_cookie("T.S", T0 + 900.9, T0, secure=True) == (
        "cs-personalize-preview=T.S; Max-Age=900; Path=/; HttpOnly; SameSite=Lax; Secure"
    )
    assert session_cookie("T.S", T0 + 60, T0, secure=False) == (
        "cs-personalize-preview=T.S; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
    )
    assert "Max-Age=0;" in session_cookie("T.S", T0 - 5, T0, secure=False)
    assert end_cookie(True) == "cs-personalize-preview=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure"
    assert end_cookie(False) == "cs-personalize-preview=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"
    with pytest.raises(ValueError):
        session_cookie("T; Domain=evil.example", T0 + 60, T0, secure=False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("30m", 1800), ("1h", 3600), ("2d", 172_800), (" 90s ", 90), ("1.5h", 5400), ("7d", 604_800),
     ("1H", 3600), ("604800", 604_800), ("1", 1)],
)  # fmt: skip
def test_parse_ttl_reads_seconds_and_units(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "not a duration"), ("1w", "not a duration"), ("-1h", "not a duration"), ("h", "not a duration"),
     ("1e3", "not a duration"), ("١h", "not a duration"), ("1 hour", "not a duration"), ("0", "too short"),
     ("0.5s", "too short"), ("8d", "longer than the 7 days"), ("604801", "longer than the 7 days"),
     ("9" * 400, "longer than the 7 days")],
)  # fmt: skip
def test_parse_ttl_refuses_other_forms_and_over_seven_days(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ttl(text)


# -- the setting ----------------------------------------------------------------------------------------------------

SERVE = {"origin": "http://127.0.0.1:3000", "rules": "rules"}


def test_preview_secret_comes_from_the_file_then_the_environment_then_the_flag(tmp_path: Path) -> None:
    assert "preview_secret" in FIELDS and load_config(None, {}, SERVE).preview_secret == ""
    file = tmp_path / "edgeproxy.toml"
    file.write_text('origin = "http://127.0.0.1:3000"\nrules = "rules"\npreview_secret = "from-file"\n')
    assert load_config(str(file), {}, {}).preview_secret == "from-file"
    env = {"EDGEPROXY_PREVIEW_SECRET": "from-env"}
    assert load_config(str(file), env, {}).preview_secret == "from-env"
    assert load_config(str(file), env, {"preview_secret": "from-flag"}).preview_secret == "from-flag"
    # read_settings: the same sources, without the proxy's required settings (what preview-link reads).
    assert read_settings(None, env, {}).preview_secret == "from-env"


def test_a_secret_setting_of_the_wrong_type_is_reported_without_its_value(tmp_path: Path) -> None:
    file = tmp_path / "edgeproxy.toml"
    file.write_text('origin = "http://127.0.0.1:3000"\nrules = "rules"\npreview_secret = 918273645\n')
    with pytest.raises(ConfigError, match="setting 'preview_secret': expected a string") as caught:
        load_config(str(file), {}, {})
    assert "918273645" not in str(caught.value)


def test_serve_takes_the_preview_secret_flag() -> None:
    from edgeproxy.cli import build_parser

    args = build_parser().parse_args(["serve", "--preview-secret", "s3cret"])
    assert args.preview_secret == "s3cret"


# -- edgeproxy preview-link -----------------------------------------------------------------------------------------

NOW = "2026-11-22T10:00:00Z"  # the process clock of every run below (EDGEPROXY_NOW): no wall clock


def preview_link_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    clean.update({"EDGEPROXY_NOW": NOW, **(env or {})})
    return subprocess.run([sys.executable, "-m", "edgeproxy.cli", "preview-link", *args], env=clean,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def token_of(link: str) -> str:
    _, found = strip_preview_param(urlsplit(link).query)
    assert found is not None, link
    return found


def test_preview_link_prints_a_link_whose_token_verifies_with_the_same_secret() -> None:
    result = preview_link_run(
        "--url", "https://shop.example/p?utm_campaign=bf#top", "--set", "0=2", "--exclude", "1", "--draft",
        "--now", "2026-11-28T12:00:00Z", env={"EDGEPROXY_PREVIEW_SECRET": SECRET},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.count("\n") == 1
    link = result.stdout.strip()
    assert link.startswith("https://shop.example/p?utm_campaign=bf&cs_preview=") and link.endswith("#top")
    start = parse_instant(NOW)
    expected = Preview(forced=(("0", "2"), ("1", None)), draft=True, now=parse_instant("2026-11-28T12:00:00Z"),
                       expires=start + HOUR, issued=start)  # fmt: skip
    assert verify(token_of(link), SECRET, start + 1) == expected
    assert verify(token_of(link), SECRET, start + HOUR) == Invalid(EXPIRED)
    assert verify(token_of(link), "another", start + 1) == Invalid(BAD_SIGNATURE)


def test_preview_link_reads_the_secret_from_the_proxy_config_and_the_flag_wins(tmp_path: Path) -> None:
    config = tmp_path / "edgeproxy.toml"
    config.write_text('origin = "http://127.0.0.1:3000"\nrules = "rules"\npreview_secret = "from-file"\n')
    start = parse_instant(NOW)
    from_file = preview_link_run("--url", "http://127.0.0.1:8080/", "--config", str(config), "--ttl", "2d")
    assert from_file.returncode == 0, from_file.stderr
    granted = verify(token_of(from_file.stdout.strip()), "from-file", start)
    assert isinstance(granted, Preview) and granted.expires == start + 2 * DAY and granted.forced == ()
    assert granted.now is None and granted.draft is False
    flag = preview_link_run("--url", "http://127.0.0.1:8080/", "--config", str(config), "--preview-secret", "flag")
    assert isinstance(verify(token_of(flag.stdout.strip()), "flag", start), Preview)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--url", "https://shop.example/"], {"EDGEPROXY_PREVIEW_SECRET": ""},
         ["--preview-secret", "EDGEPROXY_PREVIEW_SECRET", "--config"]),
        (["--url", "https://shop.example/", "--set", "0"], {}, ["--set '0'", "EXP=VAR"]),
        (["--url", "https://shop.example/", "--set", "0=a b"], {}, ["--set '0=a b'", "EXP=VAR"]),
        (["--url", "https://shop.example/", "--set", "0=1", "--exclude", "0"], {}, ["--exclude '0'", "once"]),
        (["--url", "https://shop.example/", "--exclude", "x/y"], {}, ["--exclude 'x/y'", "short uid"]),
        (["--url", "https://shop.example/", "--now", "yesterday"], {}, ["--now", "ISO-8601"]),
        (["--url", "https://shop.example/", "--ttl", "8d"], {}, ["--ttl", "7 days"]),
        (["--url", "https://shop.example/", "--ttl", "1w"], {}, ["--ttl", "30m, 1h, 2d"]),
        (["--url", "ftp://shop.example/"], {}, ["--url", "http:// or https://"]),
        (["--url", "/relative/path"], {}, ["--url", "http:// or https://"]),
        (["--url", "https://shop.example/"], {"EDGEPROXY_NOW": "soon"}, ["EDGEPROXY_NOW", "ISO-8601"]),
    ],
)  # fmt: skip
def test_preview_link_errors_are_one_line_naming_the_flag_with_exit_2(
    args: list[str], env: dict[str, str], says: list[str]
) -> None:
    result = preview_link_run(*args, env={"EDGEPROXY_PREVIEW_SECRET": SECRET, **env})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeproxy: preview-link: "), result.stderr
    for text in says:
        assert text in lines[0], (text, lines[0])
    assert SECRET not in result.stderr


def test_preview_link_config_errors_are_one_line_and_never_show_the_secret(tmp_path: Path) -> None:
    config = tmp_path / "edgeproxy.toml"
    config.write_text("preview_secret = 918273645\n")
    result = preview_link_run("--url", "https://shop.example/", "--config", str(config))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "preview_secret" in result.stderr and "918273645" not in result.stderr
