"""Checks a written version against docs/model_repo.md (pipeline self-check; the service has its own)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.tokens import SPECIAL_IDS, SPECIAL_TOKENS


def check_version(path: str | Path) -> dict:
    """Raise ValueError naming the first problem; return the manifest when the version is valid."""
    root = Path(path)
    m = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    if m.get("format") != "gr-serve/model-repo" or m.get("format_version") != 1:
        raise ValueError("manifest format")
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    if set(m["files"]) != on_disk:
        raise ValueError(f"files listed != files on disk: {sorted(set(m['files']) ^ on_disk)}")
    for rel, digest in m["files"].items():
        if hashlib.sha256((root / rel).read_bytes()).hexdigest() != digest:
            raise ValueError(f"sha256 mismatch: {rel}")
    cat = hashlib.sha256((root / "catalog/sids.npy").read_bytes() + (root / "catalog/items.jsonl").read_bytes())
    if m["catalog_version"] != cat.hexdigest()[:16]:
        raise ValueError("catalog_version")
    sid = m["sid"]
    sids = np.load(root / "catalog/sids.npy", allow_pickle=False)
    if sids.dtype != np.int32 or sids.shape != (m["item_count"], sid["length"]):
        raise ValueError(f"sids.npy dtype/shape {sids.dtype} {sids.shape}")
    if (sids < 0).any() or (sids >= np.asarray(sid["codebook_sizes"])).any():
        raise ValueError("code out of range")
    if len(np.unique(sids, axis=0)) != len(sids):
        raise ValueError("duplicate SID")
    items = [json.loads(x) for x in (root / "catalog/items.jsonl").read_text(encoding="utf-8").splitlines()]
    if len(items) != m["item_count"] or len({i["item_id"] for i in items}) != len(items):
        raise ValueError("items.jsonl count / duplicate ids")
    if m["special_tokens"] != SPECIAL_IDS:
        raise ValueError("special token ids")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / "hf/tokenizer.json"))
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise ValueError(f"special token {name}")
    for lvl, (name, size) in enumerate(zip(sid["level_names"], sid["codebook_sizes"], strict=True)):
        for c in range(size):
            if tok.token_to_id(f"<{name}_{c}>") != sid["token_offsets"][lvl] + c:
                raise ValueError(f"SID token <{name}_{c}>")
    for line in (root / "eval/queries.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        if set(q) != {"query", "history", "target", "task"}:
            raise ValueError("eval query fields")
    return m
