"""The written version loads with transformers and follows docs/model_repo.md."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.synthetic import build_synthetic_version
from pipeline.tokens import SPECIAL_IDS, SPECIAL_TOKENS


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_version(tmp_path_factory.mktemp("repo") / "synthetic" / "1", seed=0)


def test_manifest_and_hashes(version: Path) -> None:
    m = json.loads((version / "manifest.json").read_text())
    assert m["format"] == "gr-serve/model-repo" and m["format_version"] == 1
    assert m["sid"]["token_offsets"] == [7, 15, 23, 31] and m["sid"]["level_names"] == ["a", "b", "c", "d"]
    assert m["special_tokens"] == SPECIAL_IDS
    on_disk = {p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    for rel, digest in m["files"].items():
        assert hashlib.sha256((version / rel).read_bytes()).hexdigest() == digest
    cat = hashlib.sha256((version / "catalog/sids.npy").read_bytes() + (version / "catalog/items.jsonl").read_bytes())
    assert m["catalog_version"] == cat.hexdigest()[:16]
    sids = np.load(version / "catalog/sids.npy")
    assert sids.dtype == np.int32 and sids.shape == (m["item_count"], 4)
    assert len(np.unique(sids, axis=0)) == len(sids)
    assert (sids < np.asarray(m["sid"]["codebook_sizes"])).all() and (sids >= 0).all()
    items = [json.loads(x) for x in (version / "catalog/items.jsonl").read_text().splitlines()]
    assert len(items) == m["item_count"] and len({i["item_id"] for i in items}) == len(items)


def test_loads_with_transformers(version: Path) -> None:
    m = json.loads((version / "manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(version / "hf")
    model = AutoModelForCausalLM.from_pretrained(version / "hf")
    assert model.config.architectures == ["Qwen2ForCausalLM"]
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    assert model.config.tie_word_embeddings
    for name, idx in zip(SPECIAL_TOKENS, range(7), strict=True):
        assert tok.convert_tokens_to_ids(name) == idx
    for lvl, (name, size) in enumerate(zip(m["sid"]["level_names"], m["sid"]["codebook_sizes"], strict=True)):
        for c in range(size):
            assert tok.convert_tokens_to_ids(f"<{name}_{c}>") == m["sid"]["token_offsets"][lvl] + c
    assert len(tok) == model.config.vocab_size
    # SID tokens are matched verbatim inside text; words are lower-cased; unknown words -> <unk>.
    word = json.loads((version / "catalog/items.jsonl").read_text().splitlines()[0])["title"].split()[0]
    ids = tok.encode(f"<a_3> {word.upper()} zzzzqq", add_special_tokens=False)
    assert ids[0] == 10 and ids[1] == tok.convert_tokens_to_ids(word) > 10 and ids[2] == SPECIAL_IDS["unk"]
    for trust in (False, True):
        t2 = AutoTokenizer.from_pretrained(version / "hf", trust_remote_code=trust)
        assert t2.encode(f"<a_3> {word}", add_special_tokens=False) == ids[:2]
    with torch.no_grad():
        logits = model(torch.tensor([[1, 4, 5, 6]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)


def test_deterministic(tmp_path: Path, version: Path) -> None:
    again = build_synthetic_version(tmp_path / "synthetic" / "1", seed=0)
    a = json.loads((version / "manifest.json").read_text())
    b = json.loads((again / "manifest.json").read_text())
    assert a["files"] == b["files"]
