"""Replay recorded traffic through the engine: who gets what, what a rule change moves, do expectations hold.

The package is the I/O side around the pure engine, one concept per module:

- `readers`       HAR files, edgeproxy decision logs and request-description JSON lines, streamed
- `decider`       contexts for a stream of descriptions, as `edgeproxy decide` builds them
- `behaviour`     behavioural attributes computed from the traffic in time order (`--behaviour`, SPEC §13)
- `aggregate`     per experience and variant: requests, distinct users; A/B split vs configured weights
- `stats`         the chi-square test (regularized upper incomplete gamma), no SciPy
- `coverage`      experiences never activated, audiences never matched, rules never true
- `diff`          two snapshots on the same traffic: moved users, re-bucketed A/B users
- `verify`        recorded decisions (decision log, HAR cookies) against today's engine
- `expectations`  request -> expected variants test files, JUnit XML
- `reporting`     the text and JSON reports; `chart` the SVG/HTML chart; `progress` the terminal bar
- `command`       `edgeproxy replay`
"""
