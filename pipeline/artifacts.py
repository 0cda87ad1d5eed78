"""Writes one model-repo version exactly as docs/model_repo.md specifies (the single writer of the layout)."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from pipeline import prompts
from pipeline.tokens import SPECIAL_IDS, SPECIAL_TOKENS, level_names, sid_tokens, token_offsets
from service.catalog import repo

FORMAT = "gr-serve/model-repo"
FORMAT_VERSION = 1
MAX_POSITIONS = 512  # prompts are <= 3 + 20*L + 32 + L tokens; 512 leaves room for longer SIDs


_TOKENIZER_MODULE = (
    '"""Word-level tokenizer of a gr-serve model-repo version: loads tokenizer.json as-is."""\n'
    "\n"
    "from transformers import TokenizersBackend\n"
    "\n"
    "\n"
    "class GrWordLevelTokenizer(TokenizersBackend):\n"
    '    """AutoTokenizer would map model_type qwen2 to Qwen2Tokenizer, which rebuilds a byte-level BPE."""\n'
)


def build_tokenizer(codebook_sizes: Sequence[int], words: Sequence[str]) -> Tokenizer:
    """Word-level tokenizer: specials and SID tokens at their fixed ids, then the query-word vocabulary.

    Words are normalised/pre-tokenised by the tokenizer's own pipeline so the vocabulary can only contain
    strings that `encode` can actually produce; duplicates after normalisation are dropped (first wins).
    """
    fixed = list(SPECIAL_TOKENS) + sid_tokens(codebook_sizes)
    probe = _text_pipeline()
    vocab: dict[str, int] = {t: i for i, t in enumerate(fixed)}
    for w in words:
        for piece, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(w)):
            if piece not in vocab:
                vocab[piece] = len(vocab)
    tok = _text_pipeline(models.WordLevel(vocab, unk_token="<unk>"))
    # Added as special tokens so they are matched verbatim, never normalised or split.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fixed])
    return tok


def _text_pipeline(model: models.Model | None = None) -> Tokenizer:
    tok = Tokenizer(model or models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def new_model(
    vocab_size: int,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int | None = None,
    kv_heads: int | None = None,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """Random-init small Qwen2. head_dim is 32 by default (a size vLLM's CPU attention supports)."""
    heads = heads or max(1, hidden // 32)
    kv_heads = kv_heads or max(1, heads // 2)
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden={hidden}, heads={heads}, kv_heads={kv_heads} do not divide")
    cfg = Qwen2Config(  # type: ignore[call-arg]  # transformers 5 stubs omit rope_theta
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=SPECIAL_IDS["bos"],
        eos_token_id=SPECIAL_IDS["eos"],
        pad_token_id=SPECIAL_IDS["pad"],
        rope_theta=10000.0,
        use_sliding_window=False,
    )
    cfg.dtype = "float32"
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).to(torch.float32)  # type: ignore[arg-type]  # stub types .to oddly
    model.eval()
    return model


def new_llama_model(
    vocab_size: int,
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    seed: int = 0,
) -> LlamaForCausalLM:
    """Random-init Llama-architecture decoder (e.g. SmolLM2-135M's shape: 576/30/9/3/1536), tied embeddings."""
    cfg = LlamaConfig(  # type: ignore[call-arg]  # transformers 5 stubs omit rope_theta
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=SPECIAL_IDS["bos"],
        eos_token_id=SPECIAL_IDS["eos"],
        pad_token_id=SPECIAL_IDS["pad"],
        rope_theta=100000.0,
    )
    cfg.dtype = "float32"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)  # type: ignore[arg-type]
    model.eval()
    return model


# One definition of the hashes, shared with the reader (service/catalog/repo.py).
sha256_file = repo.sha256_file
catalog_version = repo.catalog_digest_of


def _check_catalog(
    items: list[dict], sids: np.ndarray, codebook_sizes: Sequence[int], variable_length: bool = False
) -> None:
    if sids.ndim != 2 or sids.shape != (len(items), len(codebook_sizes)):
        raise ValueError(f"sids shape {sids.shape} != ({len(items)}, {len(codebook_sizes)})")
    ended = sids < 0  # variable-length SIDs: -1 after the last code
    if ended.any() and (not variable_length or ended[:, 0].any() or (ended[:, :-1] & ~ended[:, 1:]).any()):
        raise ValueError("a SID code is negative (variable-length SIDs: codes, then -1 up to the maximum length)")
    if (sids >= np.asarray(codebook_sizes)[None, :]).any():
        raise ValueError("a SID code is out of its codebook range")
    if len(np.unique(sids, axis=0)) != len(sids):
        raise ValueError("two rows share a SID")
    ids = [str(it["item_id"]) for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids repeat")


ASSIGNER_FILE = "catalog/sid_assigner.npz"


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz (np.load reads it) with fixed zip timestamps, so the bytes depend only on the arrays."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def catalog_row(item: dict) -> dict:
    """One catalog/items.jsonl row: category is a list of strings (a plain string becomes a 1-list),
    year an int or None."""
    cat = item.get("category", [])
    cats = [cat] if isinstance(cat, str) else [str(c) for c in cat]
    year = item.get("year")
    return {
        "item_id": str(item["item_id"]),
        "title": str(item["title"]),
        "category": [c for c in cats if c],
        "year": None if year is None else int(year),
    }


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_version(
    out_dir: str | Path,
    *,
    model_name: str,
    version: str,
    items: list[dict],
    sids: np.ndarray,
    codebook_sizes: Sequence[int],
    tokenizer_words: Sequence[str],
    model: PreTrainedModel | None,
    eval_queries: list[dict],
    eval_metrics: dict,
    build_info: dict,
    seed: int,
    per_query: list[dict] | None = None,
    sid_assigner: tuple[dict, dict[str, np.ndarray]] | None = None,
    disambiguation_level: bool = True,
    variable_length: bool = False,
    max_history_items: int = prompts.MAX_HISTORY_ITEMS,
    max_query_tokens: int = prompts.MAX_QUERY_TOKENS,
    overwrite: bool = False,
) -> Path:
    """Write a complete version directory; returns its path.

    The version is assembled in a sibling temp dir and renamed into place, so a reader (the service's
    repo watcher) never sees a half-written version. `model=None` writes a random-init model.
    per_query: rows of eval/per_query.jsonl (per-query ranks of every evaluated model).
    sid_assigner: (manifest entry, arrays) -> catalog/sid_assigner.npz and manifest `sid.assigner`.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True)")
    codebook_sizes = [int(s) for s in codebook_sizes]
    sids = np.ascontiguousarray(sids, dtype=np.int32)
    items = [catalog_row(it) for it in items]
    _check_catalog(items, sids, codebook_sizes, variable_length)

    tok = build_tokenizer(codebook_sizes, tokenizer_words)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if model is None:
        model = new_model(vocab, seed=seed)
    if model.config.vocab_size != vocab:
        raise ValueError(f"model vocab {model.config.vocab_size} != tokenizer vocab {vocab}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "hf").mkdir(parents=True)
    (tmp / "catalog").mkdir()
    (tmp / "eval").mkdir()

    _write_hf(tmp / "hf", model, tok)
    np.save(tmp / "catalog" / "sids.npy", sids, allow_pickle=False)
    _write_jsonl(tmp / "catalog" / "items.jsonl", items)
    _write_jsonl(tmp / "eval" / "queries.jsonl", eval_queries)
    if per_query is not None:
        _write_jsonl(tmp / "eval" / "per_query.jsonl", per_query)
    _write_json(tmp / "eval.json", eval_metrics)
    assigner_entry = None
    if sid_assigner is not None:
        assigner_entry = {**sid_assigner[0], "file": ASSIGNER_FILE}
        write_npz(tmp / ASSIGNER_FILE, sid_assigner[1])

    files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "version": str(version),
        "catalog_version": catalog_version(tmp / "catalog"),
        "item_count": len(items),
        "sid": {
            "length": len(codebook_sizes),
            "codebook_sizes": codebook_sizes,
            "level_names": level_names(len(codebook_sizes)),
            "token_offsets": token_offsets(codebook_sizes),
            "disambiguation_level": bool(disambiguation_level),
            "variable_length": bool(variable_length),
            **({"assigner": assigner_entry} if assigner_entry else {}),
        },
        "special_tokens": dict(SPECIAL_IDS),
        "prompt": {
            "template": prompts.PROMPT_TEMPLATE,
            "max_history_items": int(max_history_items),
            "max_query_tokens": int(max_query_tokens),
        },
        "files": files,
        "build": {"seed": int(seed), **build_info},
    }
    _write_json(tmp / "manifest.json", manifest)
    repo.load_version(tmp)  # the service's validator: a version that would not serve never lands
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _write_hf(hf: Path, model: PreTrainedModel, tok: Tokenizer) -> None:
    model.config.dtype = "float32"
    model.generation_config.bos_token_id = SPECIAL_IDS["bos"]
    model.generation_config.eos_token_id = SPECIAL_IDS["eos"]
    model.generation_config.pad_token_id = SPECIAL_IDS["pad"]
    model.to(torch.float32).save_pretrained(hf, safe_serialization=True)  # type: ignore[arg-type]
    tok.save(str(hf / "tokenizer.json"))
    names = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    _write_json(hf / "special_tokens_map.json", names)
    _write_json(
        hf / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **names,
            "model_max_length": MAX_POSITIONS,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            # model_type qwen2 makes AutoTokenizer pick Qwen2Tokenizer, which rebuilds tokenizer.json as a
            # byte-level BPE (wrong ids). auto_map sends it to a bare TokenizersBackend subclass that loads
            # tokenizer.json as-is; without trust_remote_code transformers falls back to TokenizersBackend.
            "auto_map": {"AutoTokenizer": [None, "tokenization_gr.GrWordLevelTokenizer"]},
        },
    )
    (hf / "tokenization_gr.py").write_text(_TOKENIZER_MODULE, encoding="utf-8")
