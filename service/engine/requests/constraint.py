"""The SID constraint as the logits-processor adapters see it: token ids in, masks out.

Shared by the vLLM V1 adapter (``logits_processor.py``) and the Model Runner V2 adapter
(``logits_processor_mrv2.py``) so both enforce exactly the same trie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from service.catalog.repo import ModelVersion, load_version
from service.catalog.trie import DEAD, SidTrie, TrieMasker

# ``SamplingParams.extra_args`` key; the value False opts a request out of the trie (both adapters).
OPT_OUT_KEY = "gr_constrain"


def wants_constraint(extra_args: Mapping[str, object] | None) -> bool:
    """False only for an explicit ``{OPT_OUT_KEY: False}``; anything else keeps the constraint on."""
    return (extra_args or {}).get(OPT_OUT_KEY) is not False


class SidConstraint:
    def __init__(self, version: ModelVersion, trie: SidTrie, device: torch.device):
        self.sid_length = version.sid.length
        self.marker = version.special.sid
        self.eos = version.special.eos
        self.offsets = np.asarray(version.sid.token_offsets, dtype=np.int64)
        self.trie = trie
        self.masker = TrieMasker(trie, version.sid.token_offsets, version.special.eos, device)
        self.device = device

    def prompt_state(self, prompt: Sequence[int]) -> tuple[int | None, int]:
        """(depth, node) of the SID prefix after the last ``<sid>`` marker; (None, _) if no marker."""
        return self.prompt_states([prompt])[0]

    def prompt_states(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int | None, int]]:
        """``prompt_state`` of many prompts, with one vectorised trie walk per prefix length (not per prompt)."""
        out: list[tuple[int | None, int]] = [(None, 0)] * len(prompts)
        by_len: dict[int, tuple[list[int], list[Sequence[int]]]] = {}
        for i, prompt in enumerate(prompts):
            # Scan from the end: the marker sits at most L tokens from the end of any SID prompt.
            n = len(prompt)
            for back in range(min(n, self.sid_length + 1)):
                if prompt[n - 1 - back] == self.marker:
                    if back == 0:
                        out[i] = (0, 0)
                    else:
                        rows, prefixes = by_len.setdefault(back, ([], []))
                        rows.append(i)
                        prefixes.append(prompt[n - back :])
                    break
        for depth, (rows, prefixes) in by_len.items():
            codes = np.asarray(prefixes, dtype=np.int64) - self.offsets[:depth]
            for i, node in zip(rows, self.trie.walk(codes).tolist(), strict=True):
                out[i] = (depth, node)
        return out

    def advance(self, depth: int, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Nodes after appending one token to rows that are all at ``depth``."""
        if depth >= self.sid_length:
            return np.full_like(nodes, DEAD)  # anything after a full SID leaves the catalog
        return self.trie.advance(depth, nodes, tokens - self.offsets[depth])

    def mask(self, logits: torch.Tensor, rows: Sequence[int], depths: Sequence[int], nodes: Sequence[int]) -> None:
        dev = logits.device
        self.masker.mask(
            logits,
            torch.as_tensor(rows, dtype=torch.long, device=dev),
            torch.as_tensor(depths, dtype=torch.long, device=dev).clamp_(max=self.sid_length),
            torch.as_tensor(nodes, dtype=torch.long, device=dev),
        )


def load_constraint(version_dir: Path, device: torch.device) -> SidConstraint:
    """Build the constraint for the model-repository version at ``version_dir`` (the engine's side).

    The gateway fully validated the version before starting the engine; here we only parse it.
    """
    version = load_version(version_dir, verify=False)
    return SidConstraint(version, version.trie, device)
