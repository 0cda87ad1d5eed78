"""Prompt assembly (docs/model_repo.md): ``<bos> <history> SIDs... <query> words... <sid>``."""

from __future__ import annotations

from tokenizers import Tokenizer

from service.catalog.repo import ModelVersion


class PromptBuilder:
    def __init__(self, version: ModelVersion):
        self._tok = Tokenizer.from_file(str(version.hf_dir / "tokenizer.json"))
        self._sid = version.sid
        self._special = version.special
        self._spec = version.prompt

    def query_tokens(self, query: str) -> list[int]:
        return self._tok.encode(query, add_special_tokens=False).ids[: self._spec.max_query_tokens]

    def build(self, query: str | None, history: list[tuple[int, ...]]) -> list[int]:
        """Token ids for a query and the SIDs of the known history items (oldest first)."""
        s = self._special
        ids = [s.bos, s.history]
        recent = history[-self._spec.max_history_items :] if self._spec.max_history_items else []
        for codes in recent:
            ids.extend(self._sid.to_tokens(codes))
        ids.append(s.query)
        if query:
            ids.extend(self.query_tokens(query))
        ids.append(s.sid)
        return ids
