"""vLLM Model Runner V2 (MRV2) logits processor: the same SID constraint as ``logits_processor.py``.

vLLM >= 0.33 on CUDA runs Model Runner V2 by default; its loader only accepts subclasses of
``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` (``loader.py`` rejects V1-interface classes).

Semantics are the V1 adapter's: a row is constrained when its prompt has a ``<sid>`` marker in its last
L + 1 tokens and the request did not opt out (``extra_args={"gr_constrain": False}``); its SID prefix is the
tokens after that marker plus the generated ones. Unlike the V1 adapter this one keeps no per-row trie state:
every step it re-reads each row's (at most L) prefix tokens from the runner's token history and re-walks
the trie. That costs L ``searchsorted`` calls on tiny tensors, and makes slot reuse, preemption (a request
re-added with its partial output), row reordering and async scheduling trivially correct.

GPU cost per step: only fixed-shape tensor ops on the runner's stream; no host sync (``.item()``,
``nonzero``, boolean indexing). The single host-side check reads a numpy array, like vLLM's own
``BadWordsState.apply``. The only host-to-device copy is the per-slot opt-in flags, and only in steps that
admit requests.

``TrieMaskCore`` holds all of it over plain tensors (no vLLM import), so it is unit-tested on CPU.
``TrieLogitsProcessorMRV2`` only binds it to vLLM's interface and exists only where that interface is
importable; ``engine._processor_class`` falls back to the V1 class on ImportError.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from service.engine.requests.constraint import SidConstraint, load_constraint, wants_constraint

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


class _DeviceBuffer(Protocol):
    # vLLM's StagedWriteTensor / UvaBackedTensor: ``.gpu`` is the device-visible tensor. UvaBackedTensor
    # rebinds ``.gpu`` on every flush, so it must be read at use time, never cached.
    gpu: torch.Tensor


class RequestStates(Protocol):
    """The fields of vLLM's ``LogitsProcRequestState`` this processor reads (all read-only)."""

    device: torch.device
    max_num_reqs: int
    all_token_ids: _DeviceBuffer  # [max_num_reqs, max_model_len] int32; valid up to total_len
    prompt_len: _DeviceBuffer  # [max_num_reqs] int32; the user prompt (excludes resumed output)
    total_len: _DeviceBuffer  # [max_num_reqs] int32; prompt + committed output


class StepContext(Protocol):
    """The fields of vLLM's ``LogitsContext`` this processor reads."""

    expanded_idx_mapping: torch.Tensor  # [rows] logits row -> request slot
    idx_mapping_np: np.ndarray  # [num_reqs] batch position -> slot, on the host
    expanded_local_pos: torch.Tensor  # [rows] row offset within its request (> 0 only for draft rows)
    input_ids: torch.Tensor  # [rows] token fed at each row (draft tokens live only here)


class TrieMaskCore:
    """The MRV2 processor's logic over plain tensors, driven through the MRV2 method protocol."""

    def __init__(self, constraint: SidConstraint, req_states: RequestStates) -> None:
        self.constraint = constraint
        self.req_states = req_states
        self.device = torch.device(req_states.device)
        n = req_states.max_num_reqs
        # Per-slot opt-in. The host copy is the source of truth (also used to skip whole steps without a
        # sync); the device copy is what ``apply`` reads per row.
        self._opt_in_np = np.zeros(n, dtype=bool)
        self._opt_in = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._dirty = False
        length = constraint.sid_length
        self._back = torch.arange(length + 1, device=self.device)  # prompt tail that may hold the marker
        self._ahead = torch.arange(length, device=self.device)  # prefix positions after the marker

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        # Deliberately accepts everything: the V1 adapter treats any value but False as "constrain",
        # and both deployments must answer the same request the same way.
        return None

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        # Slots are recycled: always overwrite. The prompt is not passed here (it is still only staged in
        # all_token_ids), so whether it has a marker is decided on device in ``apply``; returning True for a
        # marker-less prompt only costs vLLM a logits copy.
        on = wants_constraint(sampling_params.extra_args)
        self._opt_in_np[req_idx] = on
        self._dirty = True
        return on

    def apply_staged_writes(self) -> None:
        if not self._dirty:
            return
        src = torch.from_numpy(self._opt_in_np.copy())
        if self.device.type == "cuda":
            # A fresh pinned buffer from torch's caching host allocator is kept alive until the async
            # copy has run (as vLLM's async_tensor_h2d does), so later add_request calls cannot race it.
            src = src.pin_memory()
        self._opt_in.copy_(src, non_blocking=True)
        self._dirty = False

    def apply(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if not self._opt_in_np[ctx.idx_mapping_np].any():
            return logits  # host-side check: no request in this batch is constrained
        rs, c = self.req_states, self.constraint
        tokens = rs.all_token_ids.gpu
        slots = ctx.expanded_idx_mapping.long()
        prompt_len = rs.prompt_len.gpu[slots].long()
        total_len = rs.total_len.gpu[slots].long()
        local = ctx.expanded_local_pos.long()

        # The last marker among the prompt's final L + 1 tokens (SidConstraint.prompt_state's rule).
        back_pos = prompt_len[:, None] - 1 - self._back
        tail = tokens[slots[:, None], back_pos.clamp(min=0)]
        is_marker = (tail == c.marker) & (back_pos >= 0)
        start = prompt_len - is_marker.int().argmax(dim=1)  # argmax returns the first hit = the last marker

        # Tokens visible to this row: committed ones plus, under speculative decoding, the drafts before it
        # (as in vLLM's bad_words kernel: draft j of a request is input_ids[first_row + j + 1]).
        prefix_len = total_len + local - start
        pos = start[:, None] + self._ahead
        committed = tokens[slots[:, None], pos.clamp(max=tokens.shape[1] - 1)]
        draft_row = (torch.arange(slots.numel(), device=slots.device) - local)[:, None] + (pos - total_len[:, None]) + 1
        draft = ctx.input_ids[draft_row.clamp(0, max(slots.numel() - 1, 0))]
        window = torch.where(pos < total_len[:, None], committed.long(), draft.long())

        nodes = c.masker.walk_tokens(window, prefix_len)
        active = self._opt_in[slots] & is_marker.any(dim=1)
        c.masker.mask_rows(logits, active, prefix_len.clamp(max=c.sid_length), nodes)
        return logits


_MRV2LogitsProcessor: type | None
try:  # import-light in vLLM (no torch/triton/worker state), so also fine in the frontend process
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _MRV2LogitsProcessor
except ImportError:  # a vLLM build without Model Runner V2: only the core is defined
    _MRV2LogitsProcessor = None

if _MRV2LogitsProcessor is not None:

    class TrieLogitsProcessorMRV2(TrieMaskCore, _MRV2LogitsProcessor):  # type: ignore[misc, valid-type]
        """Registered like the V1 class: ``logits_processors=[TrieLogitsProcessorMRV2]``."""

        def __init__(self, vllm_config: VllmConfig, req_states: Any) -> None:
            # The engine's model path is ``<version>/hf``; the trie lives on the runner's device.
            version_dir = Path(vllm_config.model_config.model).parent
            TrieMaskCore.__init__(self, load_constraint(version_dir, torch.device(req_states.device)), req_states)
