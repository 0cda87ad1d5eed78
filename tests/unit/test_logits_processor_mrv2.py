"""The Model Runner V2 trie processor, driven the way vLLM 0.33's MRV2 runner drives it, on CPU tensors.

The runner's order (vllm/v1/worker/gpu/model_runner.py ``add_requests``): stage the prompt in
``all_token_ids``, call ``add_request(slot, params)``, flush the runner's buffers, then ``apply_staged_writes()``;
each step ``apply(logits, ctx)`` with rows mapped to slots by ``ctx.expanded_idx_mapping``; after sampling,
``post_update`` appends the token at ``all_token_ids[slot, total_len]`` and bumps ``total_len``. Masks are
checked against a plain-Python reference over the catalog and against the V1 adapter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from service.catalog.repo import ModelVersion, load_version
from service.engine.requests.constraint import OPT_OUT_KEY, SidConstraint, load_constraint
from service.engine.requests.logits_processor_mrv2 import TrieMaskCore

VOCAB_PAD = 7  # logits wider than the last token id, like a padded LM head


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    from pipeline.synthetic import build_synthetic_version

    root = build_synthetic_version(tmp_path_factory.mktemp("repo") / "synthetic" / "1", n_items=300, seed=0)
    return load_version(Path(root), verify=False)


@dataclass
class Buf:
    gpu: torch.Tensor


@dataclass
class FakeRunner:
    """Just the parts of MRV2's RequestState and post_update the processor can observe."""

    max_num_reqs: int
    max_model_len: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    all_token_ids: Buf = field(init=False)
    prompt_len: Buf = field(init=False)
    prefill_len: Buf = field(init=False)
    total_len: Buf = field(init=False)

    def __post_init__(self) -> None:
        self.all_token_ids = Buf(torch.zeros(self.max_num_reqs, self.max_model_len, dtype=torch.int32))
        self.prompt_len = Buf(torch.zeros(self.max_num_reqs, dtype=torch.int32))
        self.prefill_len = Buf(torch.zeros(self.max_num_reqs, dtype=torch.int32))
        self.total_len = Buf(torch.zeros(self.max_num_reqs, dtype=torch.int32))
        self.free = list(range(self.max_num_reqs))
        # stale garbage, as a reused slot would hold
        self.all_token_ids.gpu.random_(0, 50)

    def add(self, proc: TrieMaskCore, prompt: list[int], params: object, resumed_output: list[int] = ()) -> int:
        slot = self.free.pop(random.randrange(len(self.free)))
        proc.add_request(slot, params)  # the prompt is only staged at this point
        tokens = list(prompt) + list(resumed_output)  # preemption: prefill = prompt + partial output
        self.all_token_ids.gpu[slot, : len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        self.prompt_len.gpu = self.prompt_len.gpu.clone()  # UvaBackedTensor rebinds .gpu on each flush
        self.prompt_len.gpu[slot] = len(prompt)
        self.prefill_len.gpu[slot] = len(tokens)
        self.total_len.gpu[slot] = len(tokens)
        proc.apply_staged_writes()
        return slot

    def append(self, slot: int, token: int) -> None:
        n = int(self.total_len.gpu[slot])
        self.all_token_ids.gpu[slot, n] = token
        self.total_len.gpu[slot] = n + 1

    def remove(self, slot: int) -> None:
        self.free.append(slot)


def make_ctx(slots: list[int], local_pos: list[int] | None = None, input_ids: list[int] | None = None) -> object:
    n = len(slots)
    fields = dict(
        expanded_idx_mapping=torch.tensor(slots, dtype=torch.int32),
        idx_mapping=torch.tensor(sorted(set(slots)), dtype=torch.int32),
        idx_mapping_np=np.array(sorted(set(slots)), dtype=np.int32),
        expanded_local_pos=torch.tensor(local_pos or [0] * n, dtype=torch.int32),
        input_ids=torch.tensor(input_ids or [0] * n, dtype=torch.int32),
        pos=torch.zeros(n, dtype=torch.int64),
        seq_lens_upper_bound_np=np.zeros(len(set(slots)), dtype=np.int32),
    )
    try:
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext
    except ImportError:
        return SimpleNamespace(**fields)
    return LogitsContext(**fields)


def params(constrain: bool | None = None) -> SimpleNamespace:
    return SimpleNamespace(extra_args=None if constrain is None else {OPT_OUT_KEY: constrain})


# ---------------------------------------------------------------- plain-Python reference
def reference_allowed(v: ModelVersion, prompt: list[int], output: list[int], opted_in: bool) -> set[int] | None:
    """Allowed next tokens, or None when the row is not constrained."""
    length, marker, offsets = v.sid.length, v.special.sid, v.sid.token_offsets
    if not opted_in:
        return None
    tail = [i for i in range(max(0, len(prompt) - length - 1), len(prompt)) if prompt[i] == marker]
    if not tail:
        return None
    prefix = prompt[tail[-1] + 1 :] + output
    if len(prefix) >= length:
        return {v.special.eos}
    codes = tuple(t - offsets[d] for d, t in enumerate(prefix))
    nxt = {offsets[len(codes)] + int(s[len(codes)]) for s in v.sids if tuple(int(x) for x in s[: len(codes)]) == codes}
    return nxt or {v.special.eos}


def check(v: ModelVersion, logits: torch.Tensor, before: torch.Tensor, rows: list[tuple]) -> None:
    for r, (prompt, output, opted_in) in enumerate(rows):
        want = reference_allowed(v, prompt, output, opted_in)
        if want is None:
            assert torch.equal(logits[r], before[r]), f"row {r} should be untouched"
        else:
            got = set(torch.nonzero(torch.isfinite(logits[r])).flatten().tolist())
            assert got == want, f"row {r}: prompt tail {prompt[-6:]}, output {output}"
            assert torch.equal(logits[r][sorted(want)], before[r][sorted(want)])  # allowed values unchanged


def random_row(v: ModelVersion, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
    """(prompt, output, resumed_output): a SID prefix split between the prompt and the generation."""
    length, offsets, marker = v.sid.length, v.sid.token_offsets, v.special.sid
    sid = [int(x) for x in v.sids[rng.randrange(len(v.sids))]]
    tokens = [offsets[d] + c for d, c in enumerate(sid)]
    kind = rng.random()
    if kind < 0.15:  # off-catalog path: a valid token of the right level that no catalog SID continues with
        d = rng.randrange(length)
        tokens[d] = offsets[d] + rng.randrange(v.sid.codebook_sizes[d])
    elif kind < 0.25:  # beyond a full SID
        tokens = [*tokens, v.special.eos]
    depth = rng.randint(0, len(tokens))
    in_prompt = rng.randint(0, min(depth, length))
    words = [rng.randrange(offsets[0]) for _ in range(rng.randint(0, 6))]
    words = [w if w != marker else marker + 1 for w in words]
    if rng.random() < 0.2:  # an earlier marker must not win over the last one
        words = [marker, *words]
    prompt = [*words, marker, *tokens[:in_prompt]]
    if rng.random() < 0.1:  # no marker at all
        prompt = words
    rest = tokens[in_prompt:depth]
    split = rng.randint(0, len(rest))
    return prompt, rest[split:], rest[:split]


def core_factory(v: ModelVersion):
    def make(runner: FakeRunner) -> TrieMaskCore:
        return TrieMaskCore(load_constraint(v.root, runner.device), runner)

    return make


def subclass_factory(v: ModelVersion):
    mod = pytest.importorskip("service.engine.requests.logits_processor_mrv2")
    cls = getattr(mod, "TrieLogitsProcessorMRV2", None)
    if cls is None:
        pytest.skip("this vLLM build has no MRV2 interface")
    cfg = SimpleNamespace(model_config=SimpleNamespace(model=str(v.root / "hf")))
    return lambda runner: cls(cfg, runner)


@pytest.fixture(params=["core", "vllm_subclass"])
def make_proc(request: pytest.FixtureRequest, version: ModelVersion):
    return core_factory(version) if request.param == "core" else subclass_factory(version)


def vocab(v: ModelVersion) -> int:
    return max(v.sid.token_offsets[-1] + v.sid.codebook_sizes[-1], v.special.eos, v.special.sid) + VOCAB_PAD


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(6))
def test_random_prefixes_slot_reuse_and_opt_out(version: ModelVersion, make_proc, seed: int) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    runner = FakeRunner(max_num_reqs=12, max_model_len=48)
    proc = make_proc(runner)
    live: dict[int, list] = {}  # slot -> [prompt, output, opted_in]
    for _step in range(8):
        for slot in rng.sample(sorted(live), k=min(len(live), rng.randint(0, 4))):  # finish some
            del live[slot]
            runner.remove(slot)
        while runner.free and rng.random() < 0.7:  # admit some, reusing freed slots
            prompt, output, resumed = random_row(version, rng)
            opt = rng.choice([None, True, False, None])
            slot = runner.add(proc, prompt, params(opt), resumed)
            live[slot] = [prompt, resumed, opt is not False]
            for tok in output:  # tokens "generated" in earlier steps
                runner.append(slot, tok)
                live[slot][1] = [*live[slot][1], tok]
        if not live:
            continue
        order = rng.sample(sorted(live), k=len(live))  # rows are reordered every step
        logits = torch.randn(len(order), vocab(version))
        before = logits.clone()
        out = proc.apply(logits, make_ctx(order))
        check(version, out, before, [live[s] for s in order])
        for s in order:  # sample a token for some rows (any token: off-trie ones must stay dead)
            if rng.random() < 0.5:
                tok = rng.randrange(vocab(version) - VOCAB_PAD)
                runner.append(s, tok)
                live[s][1] = [*live[s][1], tok]


def test_all_opted_out_leaves_logits_alone(version: ModelVersion, make_proc) -> None:
    runner = FakeRunner(max_num_reqs=4, max_model_len=32)
    proc = make_proc(runner)
    marker = version.special.sid
    slots = [runner.add(proc, [5, marker], params(False)) for _ in range(2)]
    assert proc.add_request(runner.free[0], params(False)) is False  # declined: vLLM may skip processing
    logits = torch.randn(2, vocab(version))
    before = logits.clone()
    assert torch.equal(proc.apply(logits, make_ctx(slots)), before)
    # the same slot reused by a constrained request is masked again
    runner.remove(slots[0])
    slot = runner.add(proc, [5, marker], params())
    out = proc.apply(torch.randn(1, vocab(version)), make_ctx([slot]))
    assert set(torch.nonzero(torch.isfinite(out[0])).flatten().tolist()) == reference_allowed(
        version, [5, marker], [], True
    )


def test_speculative_rows_see_their_drafts(version: ModelVersion, make_proc) -> None:
    """Row k of a request sees committed tokens plus drafts 1..k (vLLM's bad_words convention)."""
    runner = FakeRunner(max_num_reqs=4, max_model_len=32)
    proc = make_proc(runner)
    offsets, marker = version.sid.token_offsets, version.special.sid
    sid = [offsets[d] + int(c) for d, c in enumerate(version.sids[3])]
    other = runner.add(proc, [9, marker], params())
    slot = runner.add(proc, [9, marker, sid[0]], params())
    runner.append(slot, sid[1])
    drafts = sid[2:]  # two drafts: rows at local positions 0, 1, 2
    slots = [other, slot, slot, slot]
    ctx = make_ctx(slots, local_pos=[0, 0, 1, 2], input_ids=[marker, sid[1], *drafts])
    logits = torch.randn(4, vocab(version))
    before = logits.clone()
    out = proc.apply(logits, ctx)
    rows = [([9, marker], [], True)] + [([9, marker, sid[0]], [sid[1], *drafts[:k]], True) for k in range(3)]
    check(version, out, before, rows)


def test_matches_v1_adapter(version: ModelVersion) -> None:
    """Same masks as the V1 adapter for the same requests (the two deployments must agree)."""
    lp = pytest.importorskip("service.engine.requests.logits_processor")
    from vllm.v1.sample.logits_processor import BatchUpdate

    rng = random.Random(7)
    v1 = lp.TrieLogitsProcessor(
        SimpleNamespace(model_config=SimpleNamespace(model=str(version.root / "hf"))), torch.device("cpu"), False
    )
    runner = FakeRunner(max_num_reqs=40, max_model_len=48)
    core = TrieMaskCore(load_constraint(version.root, runner.device), runner)
    added, slots = [], []
    for i in range(40):
        prompt, output, resumed = random_row(version, rng)
        p = params(rng.choice([None, False, None]))
        slot = runner.add(core, prompt, p, resumed)
        for t in output:
            runner.append(slot, t)
        added.append((i, p, prompt, [*resumed, *output]))
        slots.append(slot)
    v1.update_state(BatchUpdate(batch_size=40, removed=[], added=added, moved=[]))
    logits = torch.randn(40, vocab(version))
    a = v1.apply(logits.clone())
    b = core.apply(logits.clone(), make_ctx(slots))
    assert torch.equal(torch.isinf(a), torch.isinf(b))


def test_vllm_loader_accepts_the_class() -> None:
    loader = pytest.importorskip("vllm.v1.worker.gpu.sample.logits_processor.loader")
    from service.engine.requests.logits_processor_mrv2 import TrieLogitsProcessorMRV2

    fqcn = "service.engine.requests.logits_processor_mrv2:TrieLogitsProcessorMRV2"
    assert loader._load_v2_logitsprocs_by_fqcns([TrieLogitsProcessorMRV2, fqcn]) == [TrieLogitsProcessorMRV2] * 2
    from service.engine.requests.logits_processor import TrieLogitsProcessor

    with pytest.raises(ValueError):  # why the engine must not hand MRV2 the V1 class
        loader._load_v2_logitsprocs_by_fqcns([TrieLogitsProcessor])


def test_constraint_marker_rule_matches_prompt_state(version: ModelVersion) -> None:
    c: SidConstraint = load_constraint(version.root, torch.device("cpu"))
    rng = random.Random(3)
    for _ in range(200):
        prompt, _, _ = random_row(version, rng)
        depth, _ = c.prompt_state(prompt)
        assert (depth is None) == (reference_allowed(version, prompt, [], True) is None)


def test_without_mrv2_interface_only_the_core_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM builds without MRV2: the module still imports, and the engine's import raises ImportError."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "vllm.v1.worker.gpu.sample.logits_processor", None)  # makes it unimportable
    monkeypatch.delitem(sys.modules, "service.engine.requests.logits_processor_mrv2")
    mod = importlib.import_module("service.engine.requests.logits_processor_mrv2")
    assert hasattr(mod, "TrieMaskCore") and not hasattr(mod, "TrieLogitsProcessorMRV2")
    with pytest.raises(ImportError):
        from service.engine.requests.logits_processor_mrv2 import TrieLogitsProcessorMRV2  # noqa: F401
