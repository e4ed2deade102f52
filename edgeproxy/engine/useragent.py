"""DEVICE_TYPE and OPERATING_SYSTEM from a User-Agent (docs/contract.md §3 preset attributes, values ours).

ua-parser (the maintained uap-core rules) names the OS and device family; the mapping to Contentstack's
enumerations is ours. Classification is memoised per UA string in a bounded cache owned by the classifier,
because parsing costs tens of microseconds and real traffic repeats a few thousand UA strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ua_parser

_OS_EXACT = {
    "mac os x": "MACOS",
    "macos": "MACOS",
    "ios": "IOS",
    "ipados": "IOS",
    "android": "ANDROID",
    "chrome os": "CHROME_OS",
    "chromeos": "CHROME_OS",
}
_LINUX_FAMILIES = frozenset(
    {
        "linux",
        "ubuntu",
        "debian",
        "fedora",
        "red hat",
        "suse",
        "opensuse",
        "gentoo",
        "mint",
        "arch linux",
        "kubuntu",
        "xubuntu",
        "centos",
        "mandriva",
        "slackware",
        "freebsd",
        "openbsd",
        "netbsd",
    }
)
_MOBILE_OS = frozenset({"IOS", "ANDROID"})
_DESKTOP_OS = frozenset({"WINDOWS", "MACOS", "LINUX", "CHROME_OS"})
_BOT_PATTERN = re.compile(r"bot\b|bot/|crawl|spider|slurp|facebookexternalhit|preview|monitor|curl/|wget/", re.I)
_TABLET_PATTERN = re.compile(r"ipad|tablet|kindle|silk/|playbook|nexus (7|9|10)|sm-t\d|tab[ ;/]", re.I)
_MOBILE_OS_NAMES = re.compile(r"windows phone|blackberry|kaios|symbian|webos|firefox os", re.I)


@dataclass(frozen=True, slots=True)
class UserAgentClass:
    device_type: str
    operating_system: str


def classify_os(os_family: str) -> str:
    family = os_family.lower()
    if family.startswith("windows"):
        return "OTHER" if "phone" in family else "WINDOWS"
    if family in _OS_EXACT:
        return _OS_EXACT[family]
    if family in _LINUX_FAMILIES:
        return "LINUX"
    return "OTHER"


def classify_device(user_agent: str, device_family: str, operating_system: str) -> str:
    if device_family == "Spider" or _BOT_PATTERN.search(user_agent):
        return "BOT"
    if _TABLET_PATTERN.search(user_agent) or device_family == "iPad":
        return "TABLET"
    lowered = user_agent.lower()
    if operating_system == "ANDROID":
        # Android tablets omit "Mobile" from the UA (Google's guidance to browser vendors).
        return "MOBILE" if "mobile" in lowered else "TABLET"
    if operating_system in _MOBILE_OS or "mobi" in lowered or _MOBILE_OS_NAMES.search(user_agent):
        return "MOBILE"
    if operating_system in _DESKTOP_OS:
        return "DESKTOP"
    return "OTHER"


class UserAgentClassifier:
    """Bounded memo of `classify` results; one per compiled snapshot / process, never global."""

    __slots__ = ("_cache", "_limit")

    def __init__(self, limit: int = 20_000) -> None:
        self._cache: dict[str, UserAgentClass] = {}
        self._limit = limit

    def classify(self, user_agent: str) -> UserAgentClass:
        found = self._cache.get(user_agent)
        if found is not None:
            return found
        text = user_agent
        if not text.isascii():  # header bytes that are not UTF-8 arrive as lone surrogates: U+FFFD for the parser
            text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        parsed = ua_parser.parse(text)
        os_family = parsed.os.family if parsed.os is not None else "Other"
        device_family = parsed.device.family if parsed.device is not None else "Other"
        operating_system = classify_os(os_family)
        result = UserAgentClass(classify_device(text, device_family, operating_system), operating_system)
        if len(self._cache) >= self._limit:
            self._cache.clear()  # cheap and bounded; the hot UAs come back within a few requests
        self._cache[user_agent] = result
        return result
