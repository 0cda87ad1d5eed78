"""Load and validate one version of the model repository (format: docs/model_repo.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from service.catalog.trie import SidTrie

FORMAT = "gr-serve/model-repo"
FORMAT_VERSION = 1
SPECIAL_NAMES = ("pad", "bos", "eos", "unk", "history", "query", "sid")


class RepoError(ValueError):
    """A model-repository version is missing, malformed or tampered with; the message says what."""


@dataclass(frozen=True)
class SidSpec:
    length: int  # the maximum length when variable_length
    codebook_sizes: tuple[int, ...]
    level_names: tuple[str, ...]
    token_offsets: tuple[int, ...]
    # Variable-length SIDs (docs/model_repo.md): sids.npy rows end with -1 padding; a SID may be a prefix of others.
    variable_length: bool = False

    # The search works on a fixed-length *extended* form: a SID of length l < L continues with the END code of
    # level l (K_l, one past the level's codes; the model's <eos>) and then code 0 up to L. Every level but the
    # first has that extra END slot, so the trie, the masks and the beams keep fixed shapes.
    @property
    def search_sizes(self) -> tuple[int, ...]:
        if not self.variable_length:
            return self.codebook_sizes
        return (self.codebook_sizes[0], *(k + 1 for k in self.codebook_sizes[1:]))

    def extend(self, sids: np.ndarray) -> np.ndarray:
        """``[N, L]`` SIDs (-1 past the end) -> the extended form (int64); fixed-length SIDs are unchanged."""
        out = np.asarray(sids, dtype=np.int64).copy()
        if not self.variable_length:
            return out
        ends = out < 0
        first_end = ends & ~np.concatenate([np.zeros((len(out), 1), dtype=bool), ends[:, :-1]], axis=1)
        out[ends] = 0
        sizes = np.broadcast_to(np.asarray(self.codebook_sizes, dtype=np.int64), out.shape)
        out[first_end] = sizes[first_end]
        return out

    def strip(self, codes: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        """An extended SID -> the SID itself (cut at its END code)."""
        codes = tuple(int(c) for c in codes)
        if self.variable_length:
            for level in range(1, len(codes)):
                if codes[level] == self.codebook_sizes[level]:
                    return codes[:level]
        return codes

    def token_name(self, level: int, code: int) -> str:
        return f"<{self.level_names[level]}_{code}>"

    def to_tokens(self, codes: tuple[int, ...] | list[int]) -> list[int]:
        return [self.token_offsets[lvl] + int(c) for lvl, c in enumerate(codes) if c >= 0]

    def to_codes(self, tokens: list[int]) -> tuple[int, ...]:
        return tuple(int(t) - self.token_offsets[lvl] for lvl, t in enumerate(tokens))


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    bos: int
    eos: int
    unk: int
    history: int
    query: int
    sid: int


@dataclass(frozen=True)
class PromptSpec:
    max_history_items: int
    max_query_tokens: int


@dataclass(frozen=True)
class SidAssigner:
    """Assigns SIDs to items added after the build (manifest `sid.assigner`, catalog/sid_assigner.npz).

    A new item's embedding is `embedding_model` over `text_template`; with a `text_to_collab` map the
    representation is [text, collab_weight * unit(text @ text_to_collab)] (see docs/model_repo.md).
    Its semantic codes are the nearest centroid per level on the residual; its last code is the next
    free code under that prefix.
    """

    meta: dict[str, Any]
    centroids: tuple[np.ndarray, ...]  # per semantic level, float32 [codebook_size, dim]
    text_to_collab: np.ndarray | None  # float32 [text_dim, collab_dim] or None (text-only SIDs)
    item_embeddings: np.ndarray | None  # float32 [item_count, dim]: the build's embedding of each catalog row


@dataclass(frozen=True)
class ModelVersion:
    root: Path
    model: str
    version: str
    catalog_version: str
    item_count: int
    sid: SidSpec
    special: SpecialTokens
    prompt: PromptSpec
    manifest: dict[str, Any]

    @property
    def hf_dir(self) -> Path:
        return self.root / "hf"

    @cached_property
    def sids(self) -> np.ndarray:
        return np.load(self.root / "catalog" / "sids.npy", allow_pickle=False)

    @cached_property
    def search_sids(self) -> np.ndarray:
        """The SIDs in the search's extended fixed-length form (``SidSpec.extend``)."""
        return self.sid.extend(self.sids)

    @cached_property
    def trie(self) -> SidTrie:
        """The catalog's prefix trie over the extended SIDs (built once; validation and serving share it)."""
        from service.catalog.trie import SidTrie  # the trie is pure numpy/torch: no cycle at run time

        return SidTrie.build(self.search_sids, self.sid.search_sizes)

    def read_items(self) -> list[dict[str, str]]:
        """Every item's metadata. Not cached: serving never needs it, and 1M items are ~650 MB of dicts."""
        with open(self.root / "catalog" / "items.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def read_item_ids(self) -> list[str]:
        """Item ids in SID row order (read when the catalog is validated or loaded into Redis)."""
        return [str(it["item_id"]) for it in self.read_items()]

    def sid_assigner(self) -> SidAssigner | None:
        """The SID assigner for new items, or None when the version has none (e.g. version 1)."""
        meta = self.manifest["sid"].get("assigner")
        if meta is None:
            return None
        with np.load(self.root / meta["file"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        levels = int(meta["semantic_levels"])
        return SidAssigner(
            meta=dict(meta),
            centroids=tuple(arrays[f"centroids_{lvl}"] for lvl in range(levels)),
            text_to_collab=arrays.get("text_to_collab"),
            item_embeddings=arrays.get("item_embeddings"),
        )


def resolve_version_dir(repo: Path, model: str, version: str) -> Path:
    """``repo/model/version``; ``latest`` picks the highest integer version (then names, sorted)."""
    model_dir = Path(repo) / model
    if not model_dir.is_dir():
        raise RepoError(f"model {model!r} not found: {model_dir} is not a directory")
    if version != "latest":
        path = model_dir / version
        if not path.is_dir():
            raise RepoError(f"version {version!r} of model {model!r} not found at {path}")
        return path
    versions = [p for p in model_dir.iterdir() if p.is_dir() and (p / "manifest.json").is_file()]
    if not versions:
        raise RepoError(f"model {model!r} has no version with a manifest.json under {model_dir}")
    return max(versions, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def catalog_digest(root: Path) -> str:
    """``catalog_version`` of the version at ``root``."""
    return catalog_digest_of(root / "catalog")


def catalog_digest_of(catalog_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("sids.npy", "items.jsonl"):
        with open(catalog_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise RepoError(f"manifest.json: missing {where}{key}")
    if not isinstance(obj[key], kind):
        raise RepoError(f"manifest.json: {where}{key} has the wrong type ({type(obj[key]).__name__})")
    return obj[key]


def _parse_manifest(root: Path) -> ModelVersion:
    path = root / "manifest.json"
    if not path.is_file():
        raise RepoError(f"{root}: no manifest.json")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RepoError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise RepoError(f"{path}: not a {FORMAT} manifest of format_version {FORMAT_VERSION}")
    sid = _require(m, "sid", dict, "")
    length = _require(sid, "length", int, "sid.")
    sizes = tuple(_require(sid, "codebook_sizes", list, "sid."))
    names = tuple(_require(sid, "level_names", list, "sid."))
    offsets = tuple(_require(sid, "token_offsets", list, "sid."))
    if length < 1 or not (len(sizes) == len(names) == len(offsets) == length):
        raise RepoError(f"{path}: sid.length {length} disagrees with codebook_sizes/level_names/token_offsets")
    if any(not isinstance(k, int) or k < 1 for k in sizes):
        raise RepoError(f"{path}: sid.codebook_sizes must be positive integers")
    special = _require(m, "special_tokens", dict, "")
    prompt = _require(m, "prompt", dict, "")
    return ModelVersion(
        root=root,
        model=str(_require(m, "model", str, "")),
        version=str(_require(m, "version", str, "")),
        catalog_version=str(_require(m, "catalog_version", str, "")),
        item_count=int(_require(m, "item_count", int, "")),
        sid=SidSpec(
            length,
            sizes,
            tuple(map(str, names)),
            tuple(int(o) for o in offsets),
            bool(sid.get("variable_length", False)),
        ),
        special=SpecialTokens(**{n: int(_require(special, n, int, "special_tokens.")) for n in SPECIAL_NAMES}),
        prompt=PromptSpec(
            max_history_items=int(_require(prompt, "max_history_items", int, "prompt.")),
            max_query_tokens=int(_require(prompt, "max_query_tokens", int, "prompt.")),
        ),
        manifest=m,
    )


def _verify_files(mv: ModelVersion) -> None:
    files = _require(mv.manifest, "files", dict, "")
    listed = set(files)
    present = {str(p.relative_to(mv.root)) for p in mv.root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    if unlisted := sorted(present - listed):
        raise RepoError(f"{mv.root}: files not listed in manifest.json: {', '.join(unlisted[:5])}")
    for rel, digest in sorted(files.items()):
        p = mv.root / rel
        if not p.is_file():
            raise RepoError(f"{mv.root}: {rel} is listed in manifest.json but missing")
        if sha256_file(p) != digest:
            raise RepoError(f"{mv.root}: {rel} does not match its sha256 in manifest.json (tampered or stale)")
    if catalog_digest(mv.root) != mv.catalog_version:
        raise RepoError(f"{mv.root}: catalog_version {mv.catalog_version} does not match the catalog files")


def _verify_catalog(mv: ModelVersion) -> None:
    sids = mv.sids
    if sids.dtype != np.int32 or sids.ndim != 2 or sids.shape != (mv.item_count, mv.sid.length):
        raise RepoError(
            f"catalog/sids.npy is {sids.dtype}{list(sids.shape)}, expected int32[{mv.item_count}, {mv.sid.length}]"
        )
    if mv.sid.variable_length:
        ended = sids < 0
        if ended[:, 0].any() or (ended[:, :-1] & ~ended[:, 1:]).any():
            row = int(np.flatnonzero(ended[:, 0] | (ended[:, :-1] & ~ended[:, 1:]).any(axis=1))[0])
            raise RepoError(f"catalog/sids.npy row {row}: a SID is at least one code, then -1 up to the maximum length")
    try:
        mv.trie  # noqa: B018  # building the trie checks code ranges and duplicates
    except ValueError as e:
        raise RepoError(f"catalog/sids.npy: {e}") from e
    rows = mv.read_items()
    for n, it in enumerate(rows, 1):
        _check_item(it, n)
    ids = [str(it["item_id"]) for it in rows]
    if len(ids) != mv.item_count:
        raise RepoError(f"catalog/items.jsonl has {len(ids)} items, manifest says {mv.item_count}")
    if len(set(ids)) != len(ids):
        raise RepoError("catalog/items.jsonl: item ids are not unique")


def _check_item(it: Any, line: int) -> None:
    """An items.jsonl row: item_id and title; category a string (version 1) or a list of strings; year, when
    present, an integer or null."""
    where = f"catalog/items.jsonl line {line}"
    if not isinstance(it, dict) or "item_id" not in it or not isinstance(it.get("title", ""), str):
        raise RepoError(f"{where}: not an item object with item_id and title")
    cat = it.get("category", [])
    if not (isinstance(cat, str) or (isinstance(cat, list) and all(isinstance(c, str) for c in cat))):
        raise RepoError(f"{where}: category must be a string or a list of strings")
    year = it.get("year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
        raise RepoError(f"{where}: year must be an integer or null")


ASSIGNER_KINDS = ("residual_kmeans",)


def _verify_assigner(mv: ModelVersion) -> None:
    """Optional manifest `sid.assigner` (format_version 1 versions without it stay valid)."""
    meta = mv.manifest["sid"].get("assigner")
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise RepoError("manifest.json: sid.assigner must be an object")
    if meta.get("kind") not in ASSIGNER_KINDS:
        raise RepoError(f"manifest.json: sid.assigner.kind must be one of {ASSIGNER_KINDS}")
    for key in ("embedding_model", "text_template", "file"):
        _require(meta, key, str, "sid.assigner.")
    levels = _require(meta, "semantic_levels", int, "sid.assigner.")
    semantic = mv.sid.length - (1 if mv.manifest["sid"].get("disambiguation_level", True) else 0)
    if levels != semantic:
        raise RepoError(f"manifest.json: sid.assigner.semantic_levels {levels} != {semantic} semantic levels")
    if meta["file"] not in mv.manifest["files"]:
        raise RepoError(f"manifest.json: sid.assigner.file {meta['file']} is not listed in files")
    try:
        a = mv.sid_assigner()
    except (OSError, ValueError, KeyError) as e:
        raise RepoError(f"{meta['file']}: cannot read the assigner ({e})") from e
    assert a is not None
    dims = set()
    for lvl, c in enumerate(a.centroids):
        if c.dtype != np.float32 or c.ndim != 2 or c.shape[0] != mv.sid.codebook_sizes[lvl]:
            raise RepoError(
                f"{meta['file']}: centroids_{lvl} is {c.dtype}{list(c.shape)}, "
                f"expected float32[{mv.sid.codebook_sizes[lvl]}, dim]"
            )
        dims.add(c.shape[1])
    if len(dims) != 1:
        raise RepoError(f"{meta['file']}: centroid dimensions differ between levels")
    dim = dims.pop()
    p = a.text_to_collab
    if p is not None and (p.dtype != np.float32 or p.ndim != 2 or p.shape[0] + p.shape[1] != dim):
        raise RepoError(f"{meta['file']}: text_to_collab must be float32 [text_dim, collab_dim] matching the centroids")
    emb = a.item_embeddings
    if emb is not None and (emb.dtype != np.float32 or emb.shape != (mv.item_count, dim)):
        raise RepoError(f"{meta['file']}: item_embeddings must be float32 [{mv.item_count}, {dim}]")


def _verify_tokenizer(mv: ModelVersion) -> None:
    from tokenizers import Tokenizer

    path = mv.hf_dir / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    for name in SPECIAL_NAMES:
        want = getattr(mv.special, name)
        got = tok.token_to_id(f"<{name}>")
        if got != want:
            raise RepoError(f"{path}: special token <{name}> has id {got}, manifest says {want}")
    for level, k in enumerate(mv.sid.codebook_sizes):
        for code in range(k):
            name = mv.sid.token_name(level, code)
            got = tok.token_to_id(name)
            if got != mv.sid.token_offsets[level] + code:
                raise RepoError(f"{path}: SID token {name} has id {got}, expected {mv.sid.token_offsets[level] + code}")


def load_version(root: Path, *, verify: bool = True) -> ModelVersion:
    """Parse ``root/manifest.json``; with ``verify`` also check hashes, catalog and tokenizer."""
    mv = _parse_manifest(Path(root))
    if verify:
        _verify_files(mv)
        _verify_catalog(mv)
        _verify_assigner(mv)
        _verify_tokenizer(mv)
    return mv
