"""Hypothesis strategies of malformed and extreme requests to every ``/api/v1/pow`` endpoint,
and the properties every answer must have; run against an in-process node (many examples) and a
real server (a sample).

Each request is a mutation of a valid body (fields dropped, added or replaced by values of wrong
types, huge/negative/zero integers, NaN/Infinity, long or odd unicode strings, deep nesting), a
valid body with one field at an extreme value of the right type (boundary values), an arbitrary
JSON value, raw non-JSON or truncated bytes, NaN/Infinity literals spliced into raw JSON text,
wrong content types and wrong methods. Properties:

- never a 5xx (the 503 that /validate documents is for a failing engine, which a healthy engine
  fed bad input must never produce), and every refusal is a JSON body;
- a refused request leaves ``/status`` unchanged (ignoring the clock-driven elapsed_seconds and
  rate_per_second, and the callback counters, which an accepted round with a callback URL may
  move in the background). An accepted request (200) may change the state, so the comparison is
  re-based after it (and a round it started is stopped first).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
from hypothesis import strategies as st

from tests.e2e.helpers import ok, round_body
from vllm_poc.protocol import POW_PREFIX

IGNORED = ("elapsed_seconds", "rate_per_second", "callbacks", "stats")
BLOCK = "fuzz-block"
# The round every example starts from: no node (so /phase/generate is refused), small forwards.
FUZZ_ROUND = round_body(
    block_hash=BLOCK, block_height=4242, node_id=-1, node_count=-1, batch_size=4, seq_len=8
)

EXTREME_INTS = [
    0,
    -1,
    1,
    2,
    -(2**31),
    2**31,
    2**53 + 1,
    -(2**63),
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**30,
    -(10**30),
    511,
    512,
    513,
    4096,
    4097,
    65536,
    65537,
]
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "\udfff\ud800",
    "é" * 10,
    "漢字🙂\u202e",
    "\n\r\t",
    "NaN",
    "Infinity",
    "-1",
    "1e309",
    "null",
    "true",
    "ftp://x",
    "http://",
    "javascript:alert(1)",
    "../../etc/passwd",
    "%00%ff",
    "' OR 1=1 --",
]

ints = st.one_of(st.sampled_from(EXTREME_INTS), st.integers())
floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-320, 2.0000001, -1.0, 1e308, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
)
strings = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=40),
    st.integers(1_000, 300_000).map(lambda n: "x" * n),
)
leaves = st.one_of(st.none(), st.booleans(), ints, floats, strings)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)
nonce_lists = st.lists(  # plausible nonces, some of them beyond 64 bits
    st.one_of(st.integers(0, 1000), st.sampled_from([2**63, 2**64 - 1, 2**64, 10**30])),
    min_size=1,
    max_size=4,
)
int_lists = st.one_of(
    st.lists(ints, max_size=8),
    nonce_lists,
    st.one_of(st.integers(0, 64), st.integers(4097, 6000)).map(lambda n: list(range(n))),
)


def _proof() -> dict[str, Any]:
    return {
        "public_key": "fuzz-node",
        "block_hash": BLOCK,
        "block_height": 4242,
        "nonces": [0, 1],
        "dist": [0.5, 0.6],
        "node_id": 0,
    }


CALIBRATE = {"block_hash": BLOCK, "valid_rate": 0.5, "n_samples": 4, "batch_size": 4, "seq_len": 8}
ROUND = round_body(block_hash=BLOCK, block_height=4243, batch_size=4, seq_len=8)

Endpoints = dict[str, tuple[str, str, dict[str, Any] | None]]
"""name -> (method, path, a valid body or None for routes without one)."""

ENDPOINTS: Endpoints = {
    "status": ("GET", "/status", None),
    "version": ("GET", "/version", None),
    "versions": ("GET", "/versions", None),
    "init": ("POST", "/init", ROUND),
    "init-generate": ("POST", "/init/generate", ROUND),
    "init-validate": ("POST", "/init/validate", ROUND),
    "phase-generate": ("POST", "/phase/generate", None),
    "phase-validate": ("POST", "/phase/validate", None),
    "validate": ("POST", "/validate", _proof()),
    "stop": ("POST", "/stop", None),
    "calibrate": ("POST", "/calibrate", CALIBRATE),
}
"""The distance protocol's routes."""


def artifact_endpoints(model: str) -> Endpoints:
    """The artifact protocol's routes, with bodies as gonka's MLNode sends them for ``model``."""
    round_fields = {
        "block_hash": BLOCK,
        "block_height": 4243,
        "public_key": "fuzz-node",
        "node_id": 0,
        "node_count": 1,
        "params": {"model": model, "seq_len": 8, "k_dim": 12},
        "batch_size": 4,
    }
    validation = {"artifacts": [{"nonce": 0, "vector_b64": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}
    return {
        "status": ("GET", "/status", None),
        "versions": ("GET", "/versions", None),
        "init-generate": ("POST", "/init/generate", {**round_fields, "group_id": 0, "n_groups": 1}),
        "generate": ("POST", "/generate", {**round_fields, "nonces": [0, 1], "wait": True}),
        "generate-validation": (
            "POST",
            "/generate",
            {**round_fields, "nonces": [0], "wait": True, "validation": validation},
        ),
        "generate-result": ("GET", "/generate/0", None),
        "stop": ("POST", "/stop", None),
    }


FIELD_NAMES = sorted(
    {k for _, _, b in [*ENDPOINTS.values(), *artifact_endpoints("m").values()] if b for k in b}
    | {"callback_url", "random_projection", "fraud_threshold", "url", "__proto__", ""}
)
CONTENT_TYPES: list[str | bytes] = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "",
    b"application/json;;; q=\xe9",  # obs-text (latin-1) in the header value
]


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any] | None) -> Any:
    """A valid body with 1-3 fields dropped, added or replaced."""
    body = dict(base or {})
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "set", "extra", "pair"]))
        key = draw(st.sampled_from(sorted(body) or FIELD_NAMES))
        if op == "drop" and body:
            body.pop(key, None)
        elif op == "set":
            body[key] = draw(st.one_of(json_values, int_lists))
        elif op == "extra":
            body[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=12))] = draw(json_values)
        else:  # nonces and dist of equal length, so the pairing check is not all that fails
            nonces = draw(st.one_of(nonce_lists, int_lists))
            body["nonces"] = nonces
            dist = st.one_of(st.floats(0, 2), floats)
            body["dist"] = draw(st.lists(dist, min_size=len(nonces), max_size=len(nonces)))
    return body


def _encode(value: Any, ascii_only: bool) -> bytes:
    # allow_nan (the default) writes NaN/Infinity literals; surrogatepass lets lone surrogates
    # through as invalid UTF-8 when not escaped.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def boundary(draw: st.DrawFn, base: dict[str, Any] | None) -> Any:
    """A valid body with one field set to an extreme value of the right JSON type."""
    body = dict(base or {})
    if not body:
        return draw(json_values)
    key = draw(st.sampled_from(sorted(body)))
    value = body[key]
    if key in ("nonces", "dist"):
        nonces = draw(nonce_lists)
        body["nonces"] = nonces
        body["dist"] = draw(st.lists(st.floats(0, 2), min_size=len(nonces), max_size=len(nonces)))
    elif isinstance(value, bool):
        body[key] = not value
    elif isinstance(value, int):
        body[key] = draw(ints)
    elif isinstance(value, float):
        body[key] = draw(floats)
    elif isinstance(value, str):
        body[key] = draw(strings)
    return body


@st.composite
def raw_bodies(draw: st.DrawFn, base: dict[str, Any] | None) -> bytes:
    valid = json.dumps(base or {"a": 1}).encode()
    kind = draw(st.sampled_from(["binary", "truncated", "deep", "literal", "bignum", "empty"]))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"1" + closer * depth
    if kind == "literal" and base:  # a NaN/Infinity literal in place of a field's value
        key = draw(st.sampled_from(sorted(base)))
        lit = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"-NaN", b"1e99999"]))
        return json.dumps(dict(base, **{key: "@@"})).encode().replace(b'"@@"', lit)
    if kind == "bignum" and base:
        key = draw(st.sampled_from(sorted(base)))
        digits = b"9" * draw(st.integers(20, 6000))
        return json.dumps(dict(base, **{key: "@@"})).encode().replace(b'"@@"', digits)
    return b""


@st.composite
def requests(
    draw: st.DrawFn, endpoint: str, endpoints: Endpoints = ENDPOINTS
) -> tuple[str, str, bytes, dict[str, Any]]:
    method, path, base = endpoints[endpoint]
    kind = draw(st.sampled_from(["mutated", "boundary", "json", "raw"]))
    if kind == "mutated":
        content = _encode(draw(mutated(base)), draw(st.booleans()))
    elif kind == "boundary":
        content = _encode(draw(boundary(base)), draw(st.booleans()))
    elif kind == "json":
        content = _encode(draw(json_values), draw(st.booleans()))
    else:
        content = draw(raw_bodies(base))
    # Half the time JSON, so the body reaches validation (other types never get parsed).
    headers = {"Content-Type": draw(st.just("application/json") | st.sampled_from(CONTENT_TYPES))}
    if draw(st.integers(0, 9)) == 0:  # now and then a wrong method
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]))
    if path.startswith("/generate/"):  # now and then an odd request id
        path = "/generate/" + draw(st.sampled_from(["0", "x" * 300, "%00", "..%2F..", "🙂"]))
    query = draw(st.sampled_from(["", "?x=1", "?batch_size=-1", "?%ff=%00", "?since=-5"]))
    return method, path + query, content, headers


class Tracker:
    """The /status a refused request must leave unchanged, for either protocol.

    ``client`` is an ``httpx.Client`` of a real server (one connection per request: a
    keep-alive connection that the server closes while hypothesis pauses would fail the next
    request) or the ``TestClient`` of an in-process node. ``protocol`` says how to bring the
    node back to the example's starting point: the distance protocol's fuzz round (``/init``),
    the artifact protocol's idle node.
    """

    def __init__(self, client: httpx.Client, protocol: str = "distance") -> None:
        self.client = client
        self.protocol = protocol
        self.clean = False
        self.baseline: dict[str, Any] = {}
        self.answers: dict[int, int] = {}
        """How many answers of each status code."""

    def start_example(self) -> None:
        """Back to the starting point when the last example did not end cleanly (or at first)."""
        if not self.clean:
            _post_ok(self.client, "/stop")
            if self.protocol == "distance":
                _post_ok(self.client, "/init", FUZZ_ROUND)
            self.rebase()
        self.clean = False

    def send(self, method: str, path: str, content: bytes, headers: dict[str, Any]) -> Any:
        """One fuzzed request; checks what every answer must be, and what a refusal leaves."""
        r = self.client.request(method, POW_PREFIX + path, content=content, headers=headers)
        self.answers[r.status_code] = self.answers.get(r.status_code, 0) + 1
        assert r.status_code < 500, (r.status_code, r.text[:800])
        if r.status_code == 200:
            self.rebase()
        else:
            assert r.json() is not None, "a refusal must be a JSON body"
            assert self.snapshot() == self.baseline, "a refused request changed the state"
        self.clean = True
        return r

    def snapshot(self) -> dict[str, Any]:
        return {k: v for k, v in _status(self.client).items() if k not in IGNORED}

    def rebase(self) -> None:
        now = _status(self.client)
        if "GENERATING" in (now.get("state"), now.get("status")):
            _post_ok(self.client, "/stop")  # an accepted round would move the counters
        self.baseline = self.snapshot()


def _status(client: httpx.Client) -> dict[str, Any]:
    return ok(client.get(POW_PREFIX + "/status"))


def _post_ok(client: httpx.Client, path: str, body: Any = None) -> None:
    ok(client.post(POW_PREFIX + path, json=body))
