"""Malformed and hostile input, by hand, against the real gateway: every refusal fast, in the one error schema,
with nothing internal in it; and the edge cases that are served (duplicates, over-long query and history)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway import Gateway

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

MAX_BODY = 32_768  # the Settings default
WORD = "peta"  # a word of the synthetic catalog's titles (in the model's vocabulary)


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


JSON = {"content-type": "application/json"}
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("body over the limit (Content-Length)", {"content": b'{"query": "' + b"a" * MAX_BODY + b'"}'}, 413,
     "payload_too_large"),
    ("body over the limit (chunked, no length)", {"content": _chunks(b'{"query": "' + b"a" * MAX_BODY + b'"}')}, 413,
     "payload_too_large"),
    ("invalid UTF-8", {"content": b'{"query": "\xff\xfe star"}'}, 422, "invalid_json"),
    ("not JSON", {"content": b"{query: 1"}, 422, "invalid_json"),
    ("JSON nested 5000 deep", {"content": b'{"history": ' + b"[" * 5000 + b"]" * 5000 + b"}"}, 422, "invalid_json"),
    ("JSON nested 200 deep", {"content": b'{"history": ' + b"[" * 200 + b"]" * 200 + b"}"}, 422, "invalid_request"),
    ("20,000-digit integer", {"content": b'{"query": "a", "history": [' + b"9" * 20_000 + b"]}"}, 422,
     "invalid_json"),
    ("NaN", {"content": b'{"query": "a", "top_k": NaN}'}, 422, "invalid_json"),
    ("Infinity", {"content": b'{"query": "a", "beam_width": Infinity}'}, 422, "invalid_json"),
    ("top_k 10^30", {"content": b'{"query": "a", "top_k": 1000000000000000000000000000000}'}, 422, "invalid_request"),
    ("top_k 2^62", {"json": {"query": WORD, "top_k": 2**62}}, 422, "invalid_request"),
    ("negative top_k", {"json": {"query": WORD, "top_k": -3}}, 422, "invalid_request"),
    ("negative beam_width", {"json": {"query": WORD, "beam_width": -1}}, 422, "invalid_request"),
    ("float top_k", {"json": {"query": WORD, "top_k": 5.0}}, 422, "invalid_request"),
    ("5,000 history items", {"json": {"query": WORD, "history": ["1"] * 5000}}, 422, "invalid_request"),
    ("history id of 300 chars", {"json": {"history": ["x" * 300]}}, 422, "invalid_request"),
    ("query of unknown words only", {"json": {"query": "\U0001f600 \u203d\u203d zzqqx"}}, 422, "invalid_request"),
    ("query of 600 chars", {"json": {"query": f"{WORD} " * 120}}, 422, "invalid_request"),
    ("deadline header -5", {"json": {"query": WORD}, "headers": {"x-request-timeout-ms": "-5"}}, 422,
     "invalid_request"),
    ("deadline header not a number", {"json": {"query": WORD}, "headers": {"x-request-timeout-ms": "soon"}}, 422,
     "invalid_request"),
    ("form body as text/plain", {"content": b"query=a", "headers": {"content-type": "text/plain"}}, 422,
     "invalid_json"),
    ("JSON body as text/plain", {"content": b'{"query": "a"}', "headers": {"content-type": "text/plain"}}, 422,
     "invalid_request"),
]


def _no_internals(text: str) -> None:
    assert "Traceback" not in text and "File \"" not in text
    assert not re.search(r"/(tmp|work|home|root|usr|app)/", text), text
    assert "redis://" not in text and "rediss://" not in text


@pytest.mark.parametrize(("name", "kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_fast_in_the_error_schema(
    gateway: Gateway, reliability: list, name: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    headers = {**JSON, **kwargs.pop("headers", {})} if "json" not in kwargs else kwargs.pop("headers", {})
    with httpx.Client(base_url=gateway.base, timeout=30) as c:
        t0 = time.monotonic()
        r = c.post("/retrieve", headers=headers, **kwargs)
        ms = (time.monotonic() - t0) * 1e3
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code and body["error"]["message"]
    _no_internals(r.text)
    reliability.append({"fault": f"bad input: {name}", "statuses_during": {status: 1}, "codes": [code],
                        "error_latency_ms_p50_max": [round(ms, 1)] * 2, "lost": 0})


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("DELETE", "/retrieve", 405)])
def test_unknown_routes_use_the_error_schema(gateway: Gateway, method: str, path: str, status: int) -> None:
    r = httpx.request(method, f"{gateway.base}{path}", timeout=10)
    assert r.status_code == status and set(r.json()["error"]) == {"code", "message", "field"}


def _debug(gateway: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{gateway.base}/retrieve", json={**body, "debug": True, "top_k": 5}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_duplicate_history_items_keep_their_latest_position(gateway: Gateway) -> None:
    dup = _debug(gateway, {"history": ["3", "17", "3", "3", "17", "5"]})
    once = _debug(gateway, {"history": ["3", "17", "5"]})
    assert dup["debug"]["prompt_token_ids"] == once["debug"]["prompt_token_ids"]
    assert dup["items"] == once["items"]


def test_query_of_unknown_words_is_served_when_history_is_known(gateway: Gateway) -> None:
    assert _debug(gateway, {"query": "\U0001f600 zzqqx", "history": ["3"]})["items"]


def test_long_query_keeps_its_first_tokens(gateway: Gateway) -> None:
    """A query of more words than the manifest's max_query_tokens (32) is cut to its first 32 tokens."""
    long = _debug(gateway, {"query": " ".join([WORD] * 80)})["debug"]["prompt_token_ids"]
    exact = _debug(gateway, {"query": " ".join([WORD] * 32)})["debug"]["prompt_token_ids"]
    assert long == exact and len(long) == 2 + 1 + 32 + 1  # <bos> <history> <query> 32 words <sid>


def test_long_history_keeps_the_most_recent_items(gateway: Gateway) -> None:
    """History is oldest first; the prompt holds the manifest's max_history_items (20) most recent known ones."""
    history = [str(i) for i in range(1, 61)]
    full = _debug(gateway, {"history": history})
    recent = _debug(gateway, {"history": history[-20:]})
    assert full["debug"]["prompt_token_ids"] == recent["debug"]["prompt_token_ids"]
    assert len(full["debug"]["prompt_token_ids"]) == 2 + 20 * 4 + 2


def test_a_longer_deadline_than_the_maximum_is_cut_not_refused(gateway: Gateway) -> None:
    r = httpx.post(f"{gateway.base}/retrieve", json={"query": WORD}, headers={"x-request-timeout-ms": "999999999"},
                   timeout=30)
    assert r.status_code == 200
