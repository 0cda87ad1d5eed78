"""Reference beam search: only valid SIDs, correct order, scores match a cache-free recomputation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.prompts import assemble_prompt
from pipeline.reference import build_valid_prefixes, constrained_beam_search, unconstrained_beam_search
from pipeline.synthetic import build_synthetic_version


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    v = build_synthetic_version(tmp_path_factory.mktemp("ref") / "synthetic" / "1", seed=3)
    m = json.loads((v / "manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(v / "hf")
    sids = np.load(v / "catalog/sids.npy")
    return model, m, sids


def _naive_score(model, prompt: list[int], codes: tuple[int, ...], offsets, valid) -> float:
    """Cache-free score of one SID: renormalised log-prob over the allowed codes at each level."""
    total, ids = 0.0, list(prompt)
    for lvl, c in enumerate(codes):
        allowed = sorted({p[-1] for p in valid if len(p) == lvl + 1 and p[:-1] == codes[:lvl]})
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        lp = torch.log_softmax(logits[[offsets[lvl] + a for a in allowed]], -1)
        total += float(lp[allowed.index(c)])
        ids.append(offsets[lvl] + c)
    return total


def test_only_valid_sorted_and_scored(setup) -> None:
    model, m, sids = setup
    valid = build_valid_prefixes(sids)
    offsets = m["sid"]["token_offsets"]
    item_sid = {str(i + 1): tuple(s) for i, s in enumerate(sids.tolist())}
    for hist, query in (([], None), (["1", "2", "999"], None), (["5"], "zz kalo")):
        prompt = assemble_prompt(
            hist, query, item_to_sid=item_sid, encode=lambda s: [3] * len(s.split()), token_offsets=offsets
        )
        res = constrained_beam_search(model, prompt, 4, offsets, valid, 20)
        assert len(res) == 20 and all(codes in valid and len(codes) == 4 for codes, _ in res)
        assert res == sorted(res, key=lambda x: (-x[1], x[0]))
        for codes, score in res[:3]:
            assert score == pytest.approx(_naive_score(model, prompt, codes, offsets, valid), abs=1e-5)
    un = unconstrained_beam_search(model, [1, 4, 5, 6], m["sid"]["codebook_sizes"], offsets, 20)
    assert any(codes not in valid for codes, _ in un)  # random model hallucinates without the trie


def test_prompt_assembly() -> None:
    sid = {"a": (0, 1), "b": (2, 3)}
    ids = assemble_prompt(
        ["a", "x", "b"],
        "hello world",
        item_to_sid=sid,
        encode=lambda s: [100, 101, 102],
        token_offsets=[7, 11],
        max_query_tokens=2,
    )
    assert ids == [1, 4, 7, 12, 9, 14, 5, 100, 101, 6]
    assert assemble_prompt(
        ["a", "b"], None, item_to_sid=sid, encode=lambda s: [], token_offsets=[7, 11], max_history_items=1
    ) == [1, 4, 9, 14, 5, 6]
