"""Loading a model-repository version validates it and names what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.catalog.repo import RepoError, load_version, resolve_version_dir


@pytest.fixture
def version_dir(synthetic_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "synthetic" / "1"
    shutil.copytree(synthetic_root / "synthetic" / "1", dst)
    return dst


def _rewrite_manifest(root: Path, **changes: object) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m.update(changes)
    (root / "manifest.json").write_text(json.dumps(m))


def test_valid_version_loads(version_dir: Path) -> None:
    v = load_version(version_dir)
    assert v.sids.shape == (v.item_count, v.sid.length)
    assert resolve_version_dir(version_dir.parents[1], "synthetic", "latest") == version_dir


def test_tampered_file_is_rejected(version_dir: Path) -> None:
    with open(version_dir / "catalog" / "items.jsonl", "a") as f:
        f.write('{"item_id": "x", "title": "t", "category": "c"}\n')
    with pytest.raises(RepoError, match=r"catalog/items.jsonl does not match its sha256"):
        load_version(version_dir)


def test_missing_and_unlisted_files_are_rejected(version_dir: Path) -> None:
    (version_dir / "extra.bin").write_bytes(b"x")
    with pytest.raises(RepoError, match=r"not listed in manifest\.json: extra\.bin"):
        load_version(version_dir)
    (version_dir / "extra.bin").unlink()
    (version_dir / "hf" / "config.json").unlink()
    with pytest.raises(RepoError, match=r"hf/config\.json is listed in manifest\.json but missing"):
        load_version(version_dir)


def test_wrong_sid_length_and_tokenizer_mismatch_are_rejected(version_dir: Path) -> None:
    m = json.loads((version_dir / "manifest.json").read_text())
    sid = dict(m["sid"], token_offsets=[o + 1 for o in m["sid"]["token_offsets"]])
    _rewrite_manifest(version_dir, sid=sid)
    with pytest.raises(RepoError, match=r"SID token <a_0> has id 7, expected 8"):
        load_version(version_dir)
    sid = dict(m["sid"], length=3)
    _rewrite_manifest(version_dir, sid=sid)
    with pytest.raises(RepoError, match=r"sid\.length 3 disagrees"):
        load_version(version_dir)


def test_duplicate_sids_are_rejected_even_with_matching_hashes(version_dir: Path) -> None:
    from service.catalog.repo import catalog_digest, sha256_file

    sids = np.load(version_dir / "catalog" / "sids.npy")
    sids[1] = sids[0]
    np.save(version_dir / "catalog" / "sids.npy", sids)
    m = json.loads((version_dir / "manifest.json").read_text())
    m["files"]["catalog/sids.npy"] = sha256_file(version_dir / "catalog" / "sids.npy")
    m["catalog_version"] = catalog_digest(version_dir)
    (version_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RepoError, match="duplicate SID"):
        load_version(version_dir)


def test_unknown_model_or_version_is_named(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="model 'nope' not found"):
        resolve_version_dir(tmp_path, "nope", "latest")


def _rehash(root: Path) -> None:
    from service.catalog.repo import catalog_digest, sha256_file

    m = json.loads((root / "manifest.json").read_text())
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    m["files"] = {rel: sha256_file(root / rel) for rel in sorted(files)}
    m["catalog_version"] = catalog_digest(root)
    (root / "manifest.json").write_text(json.dumps(m))


def _add_assigner(root: Path, **override: object) -> None:
    from pipeline.artifacts import write_npz

    m = json.loads((root / "manifest.json").read_text())
    sizes = m["sid"]["codebook_sizes"]
    rng = np.random.default_rng(0)
    arrays = {f"centroids_{lvl}": rng.normal(size=(k, 6)).astype(np.float32) for lvl, k in enumerate(sizes[:-1])}
    arrays["item_embeddings"] = rng.normal(size=(m["item_count"], 6)).astype(np.float32)
    arrays.update(override.pop("arrays", {}))  # type: ignore[arg-type]
    write_npz(root / "catalog" / "sid_assigner.npz", arrays)
    entry = {
        "kind": "residual_kmeans",
        "embedding_model": "all-MiniLM-L6-v2",
        "text_template": "{title}. {category}",
        "semantic_levels": len(sizes) - 1,
        "file": "catalog/sid_assigner.npz",
        **override,
    }
    m["sid"]["assigner"] = entry
    (root / "manifest.json").write_text(json.dumps(m))
    _rehash(root)


def test_version_without_assigner_has_none(version_dir: Path) -> None:
    assert load_version(version_dir).sid_assigner() is None


def test_assigner_loads_and_is_validated(version_dir: Path) -> None:
    _add_assigner(version_dir)
    a = load_version(version_dir).sid_assigner()
    assert a is not None and len(a.centroids) == 3 and a.centroids[0].shape == (8, 6)
    assert a.text_to_collab is None and a.item_embeddings is not None

    _add_assigner(version_dir, semantic_levels=4)
    with pytest.raises(RepoError, match="semantic_levels 4 != 3"):
        load_version(version_dir)
    _add_assigner(version_dir, kind="lsh")
    with pytest.raises(RepoError, match=r"assigner\.kind"):
        load_version(version_dir)
    _add_assigner(version_dir, arrays={"centroids_1": np.zeros((5, 6), dtype=np.float32)})
    with pytest.raises(RepoError, match=r"centroids_1 is float32\[5, 6\], expected float32\[8, dim\]"):
        load_version(version_dir)
    _add_assigner(version_dir, arrays={"text_to_collab": np.zeros((4, 3), dtype=np.float32)})
    with pytest.raises(RepoError, match="text_to_collab"):
        load_version(version_dir)
    _add_assigner(version_dir, arrays={"text_to_collab": np.zeros((4, 2), dtype=np.float32)})
    assert load_version(version_dir).sid_assigner().text_to_collab.shape == (4, 2)  # type: ignore[union-attr]


def _rewrite_items(root: Path, change) -> None:
    path = root / "catalog" / "items.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    change(rows[0])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _rehash(root)


def test_item_rows_category_list_and_year(version_dir: Path) -> None:
    items = load_version(version_dir).read_items()
    assert isinstance(items[0]["category"], list) and "year" in items[0]
    _rewrite_items(version_dir, lambda r: r.update(category="Drama Comedy", year=1995))
    load_version(version_dir)  # a plain string (version 1) and an integer year are fine
    _rewrite_items(version_dir, lambda r: r.update(category=["Drama", 3]))
    with pytest.raises(RepoError, match="line 1: category must be a string or a list of strings"):
        load_version(version_dir)
    _rewrite_items(version_dir, lambda r: r.update(category=["Drama"], year="1995"))
    with pytest.raises(RepoError, match="line 1: year must be an integer or null"):
        load_version(version_dir)
