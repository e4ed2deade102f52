"""Replay's fast path: a request decided and counted from the truth of the rules it meets, not from its context.

Every decision and every coverage figure of a snapshot is a boolean function of its *atoms*: the truth of each rule
of the project (each audience's definition and each inline target: the rules `Coverage` lists) and of each Lytics
audience membership; a running A/B test adds the visitor's bucket. Each atom reads one *feature* of the request:
the geo, the User-Agent, the page URL (its query), the referrer, the Lytics audiences, the Lytics flows, the clock,
or one custom attribute; and a feature is a function of a few raw fields of the request description. So:

- per feature, a bounded cache maps the raw fields to an id of the truth tuple of the feature's atoms, evaluated
  on first sight by the engine (the compiled rule, on the context `context_from_description` builds);
- the ids of all features are the request's *key*; the `Outcome` of a key (each experience's segment choice or
  A/B targeting, and once the coverage samples it, which rules and audiences are true) is computed once. Keys are
  looked up in two steps: the request-level features (one cache from their raw values to a `_Node`), then the
  clock and the custom attributes;
- a new key is assembled from *units* (one experience's choice or targeting, one audience), each memoized on the
  ids of the features it reads, so real traffic (whose keys multiply a few values per feature) rarely needs a
  context at all;
- per request only the uid is new: it is indexed for distinct users, and its A/B arms are bucketed once per user.

Exact by construction: equal ids mean equal atoms, and outcomes and units are functions of the atoms; a rule's
truth on a request without custom attributes is its truth on None. The clock's raw value is the position of `now`
among the rules' time thresholds (`bisect_left`, `bisect_right`), which decides every BEFORE/AFTER/BETWEEN_TIME
rule; with any other rule on the clock it is `now` itself. A description this module does not read exactly as
`context_from_description` would (a header value that is not a string, CDN geo headers, X-Live-Attributes, a `now`
that is not ISO-8601, a field of the wrong type, an error while evaluating a rule) makes `observe` return False, and
the caller decides it from its context (and rejects it when it is invalid). Memory is bounded by the caches' limits
and, like the distribution's, by the number of distinct users (one arms entry each).
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from edgeproxy.engine.bucketing import bucket, cumulative
from edgeproxy.engine.context import (
    GEO_HEADERS,
    LIVE_ATTRIBUTES_HEADER,
    LYTICS_AUDIENCES_ATTRIBUTE,
    LYTICS_AUDIENCES_COOKIE,
    LYTICS_FLOWS_COOKIE,
    PAGE_URL_HEADER,
    VisitorContext,
    parse_cookie_header,
    resolve_user_uid,
)
from edgeproxy.engine.decide import CompiledSnapshot, CompiledVariant, Manifest, compile_audience_condition
from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.engine.loader import iter_rules, parse_iso_time
from edgeproxy.engine.memo import time_thresholds, typed_value, uid_dependent
from edgeproxy.engine.model import AudienceCondition, Rule
from edgeproxy.replay.aggregate import Distribution, UserIndex
from edgeproxy.replay.coverage import Coverage, CoverageTruth, rule_sites
from edgeproxy.replay.decider import ContextFactory
from edgeproxy.replay.readers import TrafficRecord

LIMIT = 50_000  # entries per cache (raw values per feature, keys, units); a full cache is cleared
ATOMS_LIMIT = 100_000  # distinct truth tuples of one feature before everything is reset (never, in practice)

# The raw fields of the request-level features, in the order `_read` collects them.
_RAW_FIELDS: dict[str, tuple[int, ...]] = {
    "geo": (0, 1, 2, 3),  # given country, region, city; the IP when the database will be asked
    "ua": (4,),
    "query": (5,),  # the page URL
    "referrer": (6,),
    "lytics": (7, 8),  # the live `__lytics_audiences` attribute, the `cs-lytics-audiences` cookie
    "flows": (9,),
}
_PRESET_FEATURES = {
    "COUNTRY": "geo",
    "REGION": "geo",
    "CITY": "geo",
    "DEVICE_TYPE": "ua",
    "OPERATING_SYSTEM": "ua",
    "QUERY_PARAMETERS": "query",
    "REFERRER": "referrer",
    "DATE_AND_TIME": "time",
}
# The description fields `context_from_description` type-checks, as exact classes (JSON gives exact classes; a
# subclass only sends the request down the slow path, which accepts or rejects it).
CHECKED_FIELDS: dict[str, type] = {
    "url": str,
    "method": str,
    "headers": dict,
    "userUid": str,
    "ip": str,
    "geo": dict,
    "liveAttributes": dict,
    "storedAttributes": dict,
    "now": str,
    "tags": list,
}  # the engine's `_FIELD_TYPES`, which a test keeps in step
_OPTIONAL_STR = frozenset((str, type(None)))
_OPTIONAL_DICT = frozenset((dict, type(None)))
_OPTIONAL_LIST = frozenset((list, type(None)))
# Headers whose handling this module leaves to the slow path: CDN geo (merged per field) and live attributes (JSON).
_SLOW_HEADERS = frozenset({LIVE_ATTRIBUTES_HEADER, *(name for names in GEO_HEADERS.values() for name in names)})
_EMPTY: dict[str, Any] = {}
_MISSING = object()


class _SlowPath(Exception):
    """The engine could not build or evaluate this request's context: decide it the slow way."""


def _feature_of(rule: Rule) -> str | None:
    if rule.attribute_kind == "custom":
        return "custom:" + rule.attribute
    if rule.attribute_kind == "lytics":
        return "lytics" if rule.attribute == "LYTICS_AUDIENCE" else "flows"
    if rule.attribute_kind == "preset":
        return _PRESET_FEATURES.get(rule.attribute)
    return None


def supported_snapshot(snapshot: CompiledSnapshot) -> bool:
    """Whether every rule reads a feature this module knows (a future preset sends the whole replay the slow way)."""
    return all(_feature_of(site.rule) is not None for site in rule_sites(snapshot))


def _no_features(key: tuple[int, ...]) -> tuple[()]:
    return ()


class _Feature:
    """One feature: its atoms, and raw value -> id of their truth tuple (`atoms[id]`)."""

    __slots__ = ("atoms", "ids", "predicates", "raw", "raw_of")

    def __init__(self, name: str) -> None:
        self.predicates: list[Callable[[VisitorContext], bool]] = []
        self.raw: dict[Any, int] = {}
        self.ids: dict[tuple[bool, ...], int] = {}
        self.atoms: list[tuple[bool, ...]] = []
        fields = _RAW_FIELDS.get(name)
        # This feature's raw value out of the request-level raw fields (`_read`); custom attributes and the clock
        # are read on their own.
        self.raw_of: Callable[[tuple[Any, ...]], Any] | None = itemgetter(*fields) if fields else None


class _Unit:
    """A part of an outcome (an experience's choice or A/B targeting, an audience's membership), memoized on the
    ids of the features it reads."""

    __slots__ = ("evaluate", "memo", "sub_key")

    def __init__(self, evaluate: Callable[[VisitorContext], Any], features: Iterable[int]) -> None:
        self.evaluate = evaluate
        indexes = sorted(set(features))
        self.sub_key: Callable[[tuple[int, ...]], Any] = itemgetter(*indexes) if indexes else _no_features
        self.memo: dict[Any, Any] = {}


class _Node:
    """The requests whose request-level features (geo, User-Agent, URL, referrer, Lytics) have one set of ids: the
    ids, and the outcomes under them by the rest of the key (the clock's and the custom attributes' ids)."""

    __slots__ = ("ids", "outcomes")

    def __init__(self, ids: tuple[int, ...]) -> None:
        self.ids = ids
        self.outcomes: dict[tuple[int, ...], Outcome] = {}


@dataclass(frozen=True, slots=True)
class _Template:
    """How one outcome counts for one tag selection: the slots known from the outcome, and the running A/B tests
    whose targeting held (as positions in a user's arms, `OutcomeMemo._arms_of`)."""

    fixed: tuple[int, ...]
    ab: tuple[int, ...]


@dataclass(slots=True)
class Outcome:
    """What every request with one key decides: per snapshot experience, the chosen variant, or for a running A/B
    test whether its targeting holds; and, once the coverage samples it, which rules and audiences are true."""

    choices: tuple[Any, ...]
    truth: CoverageTruth | None = None
    templates: dict[tuple[str, ...] | None, _Template] = field(default_factory=dict)


class OutcomeMemo:
    """Decides and counts records on the fast path; `observe(record)` is False when the caller must do it."""

    def __init__(
        self,
        snapshot: CompiledSnapshot,
        *,
        distribution: Distribution,
        users: UserIndex,
        coverage: Coverage | None,
        geo_lookup: Callable[[str], Any] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.snapshot = snapshot
        self.distribution = distribution
        self.users = users
        self._user_ids = users.ids
        self.coverage = coverage
        self.hits = 0
        self.misses = 0
        self._geo_lookup = geo_lookup
        self._clock = clock
        self._now = 0.0
        # Contexts for first sights, with the clock this module read for the request (a description without `now`).
        self._contexts = ContextFactory(snapshot, geo_lookup, lambda: self._now)
        self._record: TrafficRecord | None = None  # the record being read
        self._context: VisitorContext | None = None  # its context, once built
        self._outcomes = 0  # outcomes kept, under every node

        # Features, in key order: request-level ones, the clock, custom attributes.
        sites = coverage.rules if coverage is not None else rule_sites(snapshot)
        if any(_feature_of(site.rule) is None for site in sites):
            raise ValueError("a rule reads a feature the replay fast path does not know: check supported_snapshot")
        names = {name for site in sites if (name := _feature_of(site.rule)) is not None}
        if any(a.lytics_slug is not None for a in snapshot.project.audiences):
            names.add("lytics")
        order = [n for n in _RAW_FIELDS if n in names]
        self._static_count = len(order)
        order += ["time"] if "time" in names else []
        order += sorted(n for n in names if n.startswith("custom:"))
        self._features = [_Feature(name) for name in order]
        self._index = {name: n for n, name in enumerate(order)}
        time_rules: list[Rule] = []
        self._rule_atoms: list[tuple[int, int]] = []  # per coverage rule: its feature, its atom in that feature
        for site in sites:
            name = _feature_of(site.rule)
            assert name is not None
            feature = self._features[self._index[name]]
            self._rule_atoms.append((self._index[name], len(feature.predicates)))
            feature.predicates.append(site.predicate)
            if name == "time":
                time_rules.append(site.rule)
        for audience in snapshot.project.audiences:
            if audience.lytics_slug is not None:
                feature = self._features[self._index["lytics"]]
                feature.predicates.append(snapshot.audience_predicates[audience.uid])
        static_fields = [i for name in order[: self._static_count] for i in _RAW_FIELDS[name]]
        self._static_key = itemgetter(*static_fields) if static_fields else None
        self._static: dict[Any, _Node] = {}  # request-level raw values -> their node
        self._nodes: dict[tuple[int, ...], _Node] = {}  # request-level ids -> their node
        self._root = _Node(())  # the node of every request when no rule reads a request-level feature
        self._shared: dict[Any, Any] = {}  # one object per distinct raw value in the keys of `_static`
        self._geo_ip = geo_lookup is not None and "geo" in names
        self._time = self._features[self._index["time"]] if "time" in names else None
        self._thresholds = time_thresholds(time_rules)
        self._custom = tuple(
            (name.removeprefix("custom:"), self._features[n])
            for n, name in enumerate(order)
            if name.startswith("custom:")
        )
        # A request without custom attributes: every one is None, and a custom rule reads nothing else.
        blank = VisitorContext(user_uid="", now=0.0)
        self._no_custom = tuple(self._register(feature, None, blank) for _, feature in self._custom)

        experiences = snapshot.experiences
        self._position = {id(ce): n for n, ce in enumerate(experiences)}
        self._uid_dependent = tuple(uid_dependent(ce) for ce in experiences)
        # Running A/B tests: (experience uid, cumulative weights, slot per variant index with the "none" slot last).
        self._ab_tests = [
            (
                ce.experience.uid,
                cumulative([v.weight for v in ce.experience.variants]),
                (*(distribution.slot(ce.short_uid, v) for v in ce.variants), distribution.slot(ce.short_uid, None)),
            )
            for ce, dependent in zip(experiences, self._uid_dependent, strict=True)
            if dependent
        ]
        self._ab_position = {n: k for k, n in enumerate(n for n, dep in enumerate(self._uid_dependent) if dep)}
        self._arms: list[tuple[int, ...] | None] = []  # per user number: `_arms_of` its uid, once needed
        self._distinct_arms: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._templates: dict[tuple[Any, ...], _Template] = {}
        self._choices: list[_Unit] = []
        for ce, dependent in zip(experiences, self._uid_dependent, strict=True):
            experience = ce.experience
            if not dependent:
                conditions = [v.condition for v in experience.variants] if experience.status == "ACTIVE" else []
                self._choices.append(_Unit(ce.choose, self._condition_features(conditions)))
            elif experience.targeting is not None:
                targeting = compile_audience_condition(experience.targeting, snapshot.audience_predicates)
                self._choices.append(_Unit(targeting, self._condition_features([experience.targeting])))
            else:
                self._choices.append(_Unit(_always, ()))
        self._audiences = [
            _Unit(site.predicate, self._audience_features(site.uid))
            for site in (coverage.audiences if coverage is not None else ())
        ]
        self._read = self._reader()
        # Decide and count one record (distribution, distinct users, coverage); False: not done, take the slow path.
        self.observe = self._observer()

    def _audience_features(self, uid: str) -> set[int]:
        audience = next(a for a in self.snapshot.project.audiences if a.uid == uid)
        if audience.lytics_slug is not None:
            return {self._index["lytics"]}
        assert audience.definition is not None
        return {self._index[name] for rule in iter_rules(audience.definition) if (name := _feature_of(rule))}

    def _condition_features(self, conditions: Iterable[AudienceCondition | None]) -> set[int]:
        found: set[int] = set()
        for condition in conditions:
            if condition is None:
                continue
            if condition.target is not None:
                found.update(self._index[n] for rule in iter_rules(condition.target) if (n := _feature_of(rule)))
            for uid in condition.audiences + condition.lytics_audiences:
                found.update(self._audience_features(uid))
        return found

    # -- features -----------------------------------------------------------------------------------------------

    def _build_context(self) -> VisitorContext:
        """The engine's context of the current record (once per record, only when something is first seen)."""
        ctx = self._context
        if ctx is None:
            assert self._record is not None
            try:
                ctx = self._context = self._contexts(self._record).context
            except RequestDescriptionError:
                raise _SlowPath from None
        return ctx

    def _register(self, feature: _Feature, raw: Any, ctx: VisitorContext) -> int:
        """Evaluate `feature`'s atoms on `ctx` (whose raw value for it is `raw`) and remember the id."""
        try:
            atoms = tuple([predicate(ctx) for predicate in feature.predicates])
        except Exception:  # the slow path meets the same error where the engine meets it
            raise _SlowPath from None
        found = feature.ids.get(atoms)
        if found is None:
            if len(feature.atoms) >= ATOMS_LIMIT:
                self._reset()
                raise _SlowPath  # ids read before the reset mean something else now
            found = feature.ids[atoms] = len(feature.atoms)
            feature.atoms.append(atoms)
        if len(feature.raw) >= LIMIT:
            feature.raw.clear()
        feature.raw[raw] = found
        return found

    def _feature_id(self, feature: _Feature, raw: Any) -> int:
        found = feature.raw.get(raw)
        return self._register(feature, raw, self._build_context()) if found is None else found

    def _static_node(self, static_key: Any, raws: tuple[Any, ...]) -> _Node:
        ids = []
        for feature in self._features[: self._static_count]:
            assert feature.raw_of is not None
            ids.append(self._feature_id(feature, feature.raw_of(raws)))
        node = self._nodes.get(tuple(ids))
        if node is None:
            node = self._nodes[tuple(ids)] = _Node(tuple(ids))
        if len(self._static) >= LIMIT:
            self._static.clear()
            self._shared.clear()
        if isinstance(static_key, tuple):
            # The kept key shares its strings with the other keys: comparing a request's key to it then reads a few
            # hot strings rather than one cold copy each.
            shared = self._shared
            static_key = tuple([shared.setdefault(part, part) for part in static_key])
        self._static[static_key] = node
        return node

    def _reset(self) -> None:
        for feature in self._features:
            feature.raw.clear()
            feature.ids.clear()
            feature.atoms.clear()
        for unit in (*self._choices, *self._audiences):
            unit.memo.clear()
        self._forget_outcomes()
        blank = VisitorContext(user_uid="", now=0.0)
        self._no_custom = tuple(self._register(feature, None, blank) for _, feature in self._custom)

    # -- reading a description ----------------------------------------------------------------------------------

    def read(self, record: TrafficRecord) -> tuple[str, tuple[str, ...] | None, tuple[int, ...]] | None:
        """(user uid, tags, key) of a record, as `context_from_description` would see it; None: the slow path."""
        try:
            found = self._read(record)
        except _SlowPath:
            return None
        if found is None:
            return None
        user_uid, tags, node, rest = found
        return user_uid, tags, node.ids + rest

    def _reader(self) -> Callable[[TrafficRecord], tuple[str, tuple[str, ...] | None, _Node, tuple[int, ...]] | None]:
        """The function behind `read`, with what it uses bound once: it runs for every request. May raise
        `_SlowPath`."""
        memo = self
        optional_dict = _OPTIONAL_DICT
        optional_list = _OPTIONAL_LIST
        slow_headers = _SLOW_HEADERS
        optional_str = _OPTIONAL_STR
        empty = _EMPTY
        clock = self._clock
        new_uid = self._new_uid
        static_key = self._static_key
        static_cache = self._static
        static_node = self._static_node
        root = self._root
        geo_ip = self._geo_ip
        time_feature = self._time
        thresholds = self._thresholds
        positions = len(thresholds) + 1 if thresholds is not None else 0  # the pair of positions as one int
        feature_id = self._feature_id
        custom = self._custom

        def read(record: TrafficRecord) -> tuple[str, tuple[str, ...] | None, _Node, tuple[int, ...]] | None:
            memo._record = record
            memo._context = None
            desc = record.description
            if desc.__class__ is not dict:
                return None
            # The type checks of `context_from_description`, field by field (`CHECKED_FIELDS`).
            raw_headers = desc.get("headers")
            tags = desc.get("tags")
            now_field = desc.get("now")
            geo = desc.get("geo")
            uid_field = desc.get("userUid")
            live = desc.get("liveAttributes")
            stored = desc.get("storedAttributes")
            url = desc.get("url")
            ip = desc.get("ip")
            if (
                raw_headers.__class__ not in optional_dict
                or tags.__class__ not in optional_list
                or now_field.__class__ not in optional_str
                or geo.__class__ not in optional_dict
                or uid_field.__class__ not in optional_str
                or live.__class__ not in optional_dict
                or stored.__class__ not in optional_dict
                or url.__class__ not in optional_str
                or ip.__class__ not in optional_str
                or desc.get("method").__class__ not in optional_str
            ):
                return None
            headers: dict[str, str] = {}
            if raw_headers:
                for name, value in raw_headers.items():
                    if value.__class__ is not str:
                        return None
                    headers[name.lower()] = value
                if not slow_headers.isdisjoint(headers):
                    return None
            if tags is not None:
                for tag in tags:
                    if tag.__class__ is not str:
                        return None
                tags = tuple(tags)
            if now_field is not None:
                try:
                    now = parse_iso_time(now_field).timestamp()
                except ValueError:
                    return None
            else:
                now = memo._now = clock()
            if geo:
                country = geo.get("country")
                region = geo.get("region")
                city = geo.get("city")
                if (
                    country.__class__ not in optional_str
                    or region.__class__ not in optional_str
                    or city.__class__ not in optional_str
                ):
                    return None
            else:
                country = region = city = None
            cookie_header = headers.get("cookie")
            cookies = parse_cookie_header(cookie_header) if cookie_header else empty
            user_uid, _ = resolve_user_uid(headers, cookies, uid_field, new_uid)
            live = live or empty

            node = root
            if static_key is not None:
                if not (geo_ip and record.geo_lookup_allowed and (country is None or region is None or city is None)):
                    ip = None
                elif ip is None and "x-forwarded-for" in headers:
                    ip = headers["x-forwarded-for"].split(",")[0].strip() or None
                raws = (
                    country,
                    region,
                    city,
                    ip,
                    headers.get("user-agent"),
                    headers.get(PAGE_URL_HEADER) or url,
                    headers.get("referer"),
                    typed_value(live.get(LYTICS_AUDIENCES_ATTRIBUTE)) if live else None,
                    cookies.get(LYTICS_AUDIENCES_COOKIE),
                    cookies.get(LYTICS_FLOWS_COOKIE),
                )
                static = static_key(raws)
                found_node = static_cache.get(static)
                node = static_node(static, raws) if found_node is None else found_node
            rest: tuple[int, ...] = ()
            if time_feature is not None:
                raw: Any = (
                    bisect_left(thresholds, now) * positions + bisect_right(thresholds, now)
                    if thresholds is not None
                    else now
                )
                found = time_feature.raw.get(raw)
                rest = (feature_id(time_feature, raw) if found is None else found,)
            if custom:
                stored = stored or empty
                if live or stored:
                    ids = []
                    for attribute, feature in custom:
                        value = live[attribute] if attribute in live else stored.get(attribute)
                        raw = value if value is None or value.__class__ is str else typed_value(value)
                        found = feature.raw.get(raw)
                        ids.append(feature_id(feature, raw) if found is None else found)
                    rest += tuple(ids)
                else:
                    rest += memo._no_custom
            return user_uid, tags, node, rest

        return read

    def _new_uid(self) -> str:
        return self._contexts.new_uid_for(self._record)

    # -- outcomes -----------------------------------------------------------------------------------------------

    def _unit(self, unit: _Unit, key: tuple[int, ...]) -> Any:
        sub_key = unit.sub_key(key)
        value = unit.memo.get(sub_key, _MISSING)
        if value is _MISSING:
            ctx = self._build_context()
            try:
                value = unit.evaluate(ctx)
            except Exception:  # the slow path meets the same error where the engine meets it
                raise _SlowPath from None
            if len(unit.memo) >= LIMIT:
                unit.memo.clear()
            unit.memo[sub_key] = value
        return value

    def _rules_true(self, key: tuple[int, ...], rules: Iterable[int]) -> list[int]:
        """Which of `rules` (coverage rule indexes) are true for `key`: read off the features' atoms."""
        features = self._features
        atoms = self._rule_atoms
        found = []
        for i in rules:
            feature, atom = atoms[i]
            if features[feature].atoms[key[feature]][atom]:
                found.append(i)
        return found

    def _outcome(self, node: _Node, rest: tuple[int, ...]) -> Outcome:
        """The outcome of the current record (after `_read`), assembled from its units on first sight."""
        found = node.outcomes.get(rest)
        if found is not None:
            self.hits += 1
            return found
        return self._new_outcome(node, rest)

    def _new_outcome(self, node: _Node, rest: tuple[int, ...]) -> Outcome:
        key = node.ids + rest
        choices = []
        for unit in self._choices:
            value = unit.memo.get(unit.sub_key(key), _MISSING)
            choices.append(self._unit(unit, key) if value is _MISSING else value)
        coverage = self.coverage
        if coverage is not None and (coverage.pending_rules or coverage.pending_audiences):
            # Each key is looked at once: what is still pending now was false on every earlier request.
            audiences = self._audiences
            coverage.mark(
                self._rules_true(key, coverage.pending_rules),
                [i for i in coverage.pending_audiences if self._unit(audiences[i], key)],
            )
        self.misses += 1
        if self._outcomes >= LIMIT:
            self._forget_outcomes()
        self._outcomes += 1
        found = node.outcomes[rest] = Outcome(tuple(choices))
        return found

    def _forget_outcomes(self) -> None:
        for node in (*self._nodes.values(), self._root):
            node.outcomes.clear()
        self._nodes.clear()
        self._static.clear()
        self._shared.clear()
        self._outcomes = 0

    def _truth(self, key: tuple[int, ...]) -> CoverageTruth:
        rules = tuple(self._rules_true(key, range(len(self._rule_atoms))))
        return rules, tuple([i for i, unit in enumerate(self._audiences) if self._unit(unit, key)])

    def _template(self, outcome: Outcome, tags: tuple[str, ...] | None) -> _Template:
        # Keyed by identity: the choices are variants of this snapshot, True, False or None.
        by = (tuple(map(id, outcome.choices)), tags)
        found = self._templates.get(by)
        if found is None:
            fixed: list[int] = []
            ab: list[int] = []
            slot = self.distribution.slot
            for ce in self.snapshot.select(tags):
                n = self._position[id(ce)]
                choice = outcome.choices[n]
                if not self._uid_dependent[n]:
                    fixed.append(slot(ce.short_uid, choice))
                elif choice:
                    ab.append(self._ab_position[n])
                else:
                    fixed.append(slot(ce.short_uid, None))  # outside the A/B test's targeting (docs/contract.md §4.6)
            if len(self._templates) >= LIMIT:
                self._templates.clear()
            found = self._templates[by] = _Template(tuple(fixed), tuple(ab))
        outcome.templates[tags] = found
        return found

    def _arms_of(self, user_uid: str) -> tuple[int, ...]:
        """The slot of each running A/B test's variant for this user (docs/contract.md §4.6: the first variant whose
        cumulative weight exceeds the bucket; past the total, none: the last slot)."""
        arms = tuple([slots[bisect_right(sums, bucket(uid, user_uid))] for uid, sums, slots in self._ab_tests])
        return self._distinct_arms.setdefault(arms, arms)

    def manifest(self, record: TrafficRecord) -> Manifest | None:
        """The record's manifest from its outcome (what `snapshot.decide` returns); None: the slow path. For checks:
        `observe` counts without building manifests."""
        try:
            found = self._read(record)
            if found is None:
                return None
            user_uid, tags, node, rest = found
            outcome = self._outcome(node, rest)
        except _SlowPath:
            return None
        entries: list[tuple[str, CompiledVariant | None]] = []
        for ce in self.snapshot.select(tags):
            n = self._position[id(ce)]
            choice = outcome.choices[n]
            if self._uid_dependent[n]:
                index = None
                if choice:
                    sums = cumulative([v.weight for v in ce.experience.variants])
                    index = bisect_right(sums, bucket(ce.experience.uid, user_uid))
                choice = ce.variants[index] if index is not None and index < len(ce.variants) else None
            entries.append((ce.short_uid, choice))
        return Manifest(user_uid, tuple(entries))

    # -- counting -----------------------------------------------------------------------------------------------

    def _observer(self) -> Callable[[TrafficRecord], bool]:
        """The function behind `observe`, with what it uses bound once: it runs for every request."""
        memo = self
        read = self._read
        new_outcome = self._new_outcome
        truth = self._truth
        template_of = self._template
        coverage = self.coverage
        sample_every = coverage.sample_every if coverage is not None else 1
        distribution = self.distribution
        counts = distribution.counts
        bits = distribution.bits  # grown in place by `reserve`
        stride = distribution.stride
        reserve = distribution.reserve
        user_ids = self.users.ids
        new_user = self.users.index
        user_arms = self._arms
        arms_of = self._arms_of

        def observe(record: TrafficRecord) -> bool:
            sampled = False
            try:
                found = read(record)
                if found is None:
                    return False
                user_uid, tags, node, rest = found
                outcome = node.outcomes.get(rest)
                if outcome is None:
                    outcome = new_outcome(node, rest)
                else:
                    memo.hits += 1
                if coverage is not None and coverage.requests % sample_every == 0:  # in_sample(requests + 1)
                    sampled = True
                    if outcome.truth is None:
                        outcome.truth = truth(node.ids + rest)
            except _SlowPath:
                return False
            if coverage is not None:
                coverage.requests += 1
                if sampled:
                    assert outcome.truth is not None
                    coverage.add_sample(outcome.truth)
            template = outcome.templates.get(tags)
            if template is None:
                template = template_of(outcome, tags)
            user = user_ids.get(user_uid)
            if user is None:
                user = new_user(user_uid)
                reserve(user)
            distribution.requests += 1
            base = (user >> 3) * stride
            mask = 1 << (user & 7)
            for slot in template.fixed:
                counts[slot] += 1
                bits[base + slot] |= mask
            if template.ab:
                # A user's arms are computed once: a user comes back, and bucketing is the costly part.
                arms = user_arms[user] if user < len(user_arms) else None
                if arms is None:
                    if user >= len(user_arms):
                        user_arms.extend([None] * (user + 1 - len(user_arms)))
                    arms = user_arms[user] = arms_of(user_uid)
                for k in template.ab:
                    slot = arms[k]
                    counts[slot] += 1
                    bits[base + slot] |= mask
            return True

        return observe


def _always(ctx: VisitorContext) -> bool:
    return True
