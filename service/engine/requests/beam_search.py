"""Beam search over Semantic IDs on top of the vLLM engine.

Why this shape: a SID is only L tokens long, so the whole search is L engine rounds. Each round
submits one 1-token request per live beam (prompt + the beam's SID prefix); all of them, from all
in-flight queries, land in the same vLLM engine step through continuous batching, and prefix caching
re-uses the shared prompt. Compared with vLLM's built-in ``LLM.beam_search`` this
- starts with ONE request for the first level (all beams share the bare prompt), not B;
- asks each beam for only its top-B children (enough for an exact top-B: no beam can contribute more);
- reads *processed* log-probs, i.e. renormalised over the tokens the trie allows, so invalid tokens
  never enter a beam, and the built-in path's detokenisation and per-step Python objects are skipped;
- asks the engine nothing for a beam whose trie node has a single child: renormalised over one allowed
  token, its log-probability is exactly 0. With a disambiguation level most last-level steps are such
  (ml100k: 78% of items have a unique 3-code prefix), so this removes a quarter of the engine requests.

Scores: a beam's score is the sum over its L tokens of log p(token | prompt, prefix), where each
step's distribution is the model's softmax renormalised over the trie-allowed tokens of that step.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np

from service.catalog.repo import SidSpec
from service.catalog.trie import SidTrie
from service.engine.result import Beam, SearchResult


class NextTokenSource(Protocol):
    async def next_token_logprobs(self, prompt: list[int], k: int) -> list: ...  # list[TokenLogprob]


async def sid_beam_search(
    engine: NextTokenSource, prompt: list[int], sid: SidSpec, beam_width: int, trie: SidTrie | None = None
) -> SearchResult:
    """Top ``beam_width`` SIDs; with ``trie``, single-child steps are resolved without the engine."""
    result = SearchResult(beams=[Beam((), 0.0)])
    beams = result.beams
    for level in range(sid.length):
        offset, size = sid.token_offsets[level], sid.codebook_sizes[level]
        forced = np.full(len(beams), -1, dtype=np.int64)
        if trie is not None:
            prefixes = np.array([b.codes for b in beams], dtype=np.int64).reshape(len(beams), level)
            forced = trie.only_child(level, trie.walk(prefixes))
        asked = [b for b, f in zip(beams, forced.tolist(), strict=True) if f < 0]
        answers = await asyncio.gather(
            *(engine.next_token_logprobs(prompt + sid.to_tokens(b.codes), beam_width) for b in asked)
        )
        result.engine_requests += len(asked)
        replies = iter(answers)
        candidates = []
        for beam, only in zip(beams, forced.tolist(), strict=True):
            if only >= 0:
                candidates.append(Beam((*beam.codes, only), beam.score))  # log 1 = 0: the one allowed token
                continue
            for opt in next(replies):
                code = opt.token - offset
                if not 0 <= code < size:
                    result.off_level_tokens += 1
                    continue
                candidates.append(Beam((*beam.codes, code), beam.score + opt.logprob))
        # Deterministic order: score, then codes ascending (the reference search breaks ties the same way).
        candidates.sort(key=lambda c: (-c.score, c.codes))
        beams = candidates[:beam_width]
        result.steps.append(beams)
        if not beams:
            break
    result.beams = beams if beams and len(beams[0].codes) == sid.length else []
    return result
