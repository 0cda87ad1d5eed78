"""The contract between the gateway and the SID-search model: what a request carries in, what comes back out.

In: ``PoolingParams(task="embed", extra_kwargs={KWARGS_KEY: {...}})`` with ``beam_width``, ``steps`` (debug),
``filters`` (attribute filters, ``service/catalog/state.py``), ``exclude`` (SIDs the answer must not contain),
``top_k`` (how many answers to certify) and ``exact`` (keep searching until they are certified).
A request without them (vLLM's own warm-up and profiling runs) is searched with the engine's default width.

Out: one float32 tensor per request (pooler outputs must be tensors): a header
``[status, n, L, decoder_rows, step_queries, revision (2 floats), allowed (2 floats), certified, bound]``, where
``bound`` is the best score of anything not returned (-inf: nothing), then ``n`` rows of ``L``
codes and the score, best first; if steps were asked for, then per level ``d``: ``[n_d]`` and ``n_d`` rows of
``d + 1`` codes and the score. Codes are exact in float32 (they are < 2^24); the catalog revision and the number
of SIDs the query may reach are split in two exact float32 halves (up to 2^44).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import torch

KWARGS_KEY = "gr_search"
TASK: Final = "embed"
HEADER = 11
_SPLIT = 1 << 22

# status codes
OK = 0
NOT_SEARCHED = 1  # the prompt was not prefilled whole in this step (should be impossible by configuration)
BAD_REQUEST = 2  # the request's search parameters are out of the engine's bounds
FAILED = 3  # the search raised inside the engine (the traceback is in the engine's log)

STATUS_TEXT = {
    NOT_SEARCHED: "the prompt was not prefilled in one engine step (prefix caching or chunked prefill is on?)",
    BAD_REQUEST: "search parameters out of the engine's bounds or an invalid filter",
    FAILED: "the search failed inside the engine (see the engine log)",
}


@dataclass(frozen=True)
class SearchRequest:
    beam_width: int
    steps: bool = False
    filters: dict[str, Any] | None = None
    exclude: tuple[tuple[int, ...], ...] = ()
    top_k: int | None = None  # None: the beam width
    exact: bool = False

    def to_kwargs(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"beam_width": self.beam_width, "steps": self.steps, "exact": self.exact}
        if self.top_k is not None:
            spec["top_k"] = self.top_k
        if self.filters:
            spec["filters"] = self.filters
        if self.exclude:
            spec["exclude"] = [list(s) for s in self.exclude]
        return {KWARGS_KEY: spec}


def parse_request(extra_kwargs: Mapping[str, Any] | None, default_width: int, max_width: int) -> SearchRequest | None:
    """The request's search parameters, or None if they are malformed or out of bounds."""
    spec = (extra_kwargs or {}).get(KWARGS_KEY)
    if spec is None:
        return SearchRequest(default_width)
    if not isinstance(spec, Mapping):
        return None
    width = spec.get("beam_width", default_width)
    filters = spec.get("filters")
    exclude = spec.get("exclude", [])
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= max_width:
        return None
    if filters is not None and not isinstance(filters, Mapping):
        return None
    if not isinstance(exclude, Sequence) or not all(
        isinstance(s, Sequence) and all(isinstance(c, int) for c in s) for s in exclude
    ):
        return None
    top_k = spec.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= width):
        return None
    return SearchRequest(
        width,
        bool(spec.get("steps", False)),
        dict(filters) if filters else None,
        tuple(tuple(s) for s in exclude),
        top_k,
        bool(spec.get("exact", False)),
    )


def _exact(value: int) -> list[int]:
    return [value // _SPLIT, value % _SPLIT]


def encode_status(status: int, sid_length: int) -> torch.Tensor:
    return torch.tensor([status, 0, sid_length, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float32)


def _rows(codes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return torch.cat([codes.float(), scores.float()[:, None]], dim=1).reshape(-1)


def encode_result(
    codes: torch.Tensor,
    scores: torch.Tensor,
    steps: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    decoder_rows: int,
    step_queries: int,
    revision: int,
    allowed: int,
    certified: bool = False,
    bound: float = float("-inf"),
) -> torch.Tensor:
    """``decoder_rows``: beam tokens this query sent through the decoder; ``step_queries``: queries searched
    together in its engine step; ``revision``: the catalog revision searched; ``allowed``: SIDs it could reach;
    ``certified``: its top-k is provably exact; ``bound``: the best score of anything not returned."""
    sid_length = codes.shape[1]
    head: list[float] = [
        OK,
        codes.shape[0],
        sid_length,
        decoder_rows,
        step_queries,
        *_exact(revision),
        *_exact(allowed),
    ]
    head += [int(certified), bound]
    parts = [torch.tensor(head, dtype=torch.float32, device=codes.device), _rows(codes, scores)]
    for level_codes, level_scores in steps:
        parts += [torch.tensor([level_codes.shape[0]], dtype=torch.float32, device=codes.device)]
        parts.append(_rows(level_codes, level_scores))
    return torch.cat(parts)


@dataclass
class DecodedSearch:
    status: int
    beams: list[tuple[tuple[int, ...], float]]
    steps: list[list[tuple[tuple[int, ...], float]]] = field(default_factory=list)
    decoder_rows: int = 0
    step_queries: int = 0
    revision: int = 0
    allowed: int = 0
    certified: bool = False
    bound: float = float("-inf")


def _take(values: list[float], at: int, n: int, width: int) -> tuple[list[tuple[tuple[int, ...], float]], int]:
    out = []
    for r in range(n):
        row = values[at + r * (width + 1) : at + (r + 1) * (width + 1)]
        out.append((tuple(int(c) for c in row[:width]), row[width]))
    return out, at + n * (width + 1)


def decode_result(data: torch.Tensor) -> DecodedSearch:
    values = data.reshape(-1).tolist()
    status, n, sid_length, rows, step_queries, rev_hi, rev_lo, ok_hi, ok_lo, certified = (int(x) for x in values[:10])
    bound = values[10]
    if status != OK:
        return DecodedSearch(status, [])
    beams, at = _take(values, HEADER, n, sid_length)
    steps = []
    for level in range(sid_length):
        if at >= len(values):
            break
        n_level = int(values[at])
        level_beams, at = _take(values, at + 1, n_level, level + 1)
        steps.append(level_beams)
    return DecodedSearch(
        status,
        beams,
        steps,
        rows,
        step_queries,
        rev_hi * _SPLIT + rev_lo,
        ok_hi * _SPLIT + ok_lo,
        bool(certified),
        bound,
    )
