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

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt ``build`` can return: the app checks at start that it fits the engine's context."""
        return 4 + self._spec.max_history_items * self._sid.length + self._spec.max_query_tokens

    def query_tokens(self, query: str) -> list[int]:
        """Word tokens of ``query``; a query longer than the manifest's ``max_query_tokens`` keeps its first ones."""
        return self._tok.encode(query, add_special_tokens=False).ids[: self._spec.max_query_tokens]

    def knows_any_word(self, query: str) -> bool:
        """False when every word of ``query`` is out of the model's vocabulary (it tokenises to ``<unk>`` only)."""
        return any(t != self._special.unk for t in self.query_tokens(query))

    def build(self, query: str | None, history: list[tuple[int, ...]]) -> list[int]:
        """Token ids for a query and the SIDs of the known history items (oldest first).

        Only the most recent ``max_history_items`` (manifest) history items go into the prompt: older ones are
        dropped, as in training."""
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
