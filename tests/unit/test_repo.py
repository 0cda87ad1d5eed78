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
