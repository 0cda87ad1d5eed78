"""What a SID search returns, whichever path ran it (in-engine or per-beam requests)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Beam:
    codes: tuple[int, ...]
    score: float


@dataclass
class SearchResult:
    beams: list[Beam]  # complete SIDs, best first (ties: codes ascending)
    steps: list[list[Beam]] = field(default_factory=list)  # live beams after each level (debug)
    engine_requests: int = 0  # vLLM requests this search cost
    off_level_tokens: int = 0  # tokens outside the level's SID range: hallucinations, must stay 0
    decoder_rows: int = 0  # in-engine path: beam tokens this query sent through the decoder
    step_queries: int = 0  # in-engine path: queries searched together in this query's engine step
    revision: int = 0  # catalog revision the search used
    allowed: int | None = None  # in-engine path: catalog SIDs the query could reach (filters, exclusions, stock)
    bound: float = float("inf")  # best score of any SID not returned (in-engine path; inf: unknown)
