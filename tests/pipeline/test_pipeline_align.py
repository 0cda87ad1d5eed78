"""DPO pieces: token-level detachment, pair weights, the multi-label contrastive term, sequence log-probs."""

from __future__ import annotations

import torch

from pipeline.align import _seq_logps, multilabel_contrastive, pair_loss
from pipeline.artifacts import new_model
from pipeline.tokens import BOS, HISTORY, QUERY, SID


def _grads(detach: bool, shared: int):
    chosen = torch.tensor([-1.0, -2.0, -1.5, -0.5], requires_grad=True)
    rejected = torch.tensor([-1.0, -2.0, -0.7, -0.9], requires_grad=True)
    ref = torch.full((4,), -1.2)
    loss, margin = pair_loss(chosen, ref, rejected, ref, beta=0.5, shared=shared, detach_shared=detach)
    loss.backward()
    return chosen.grad, rejected.grad, margin


def test_detachment_protects_the_shared_prefix() -> None:
    gc, gr, m1 = _grads(detach=True, shared=2)
    assert torch.all(gr[:2] == 0) and torch.all(gr[2:] > 0)  # push-down only from the first differing level
    assert torch.all(gc < 0)  # chosen tokens (including the shared prefix) are pushed up
    gc2, gr2, m2 = _grads(detach=False, shared=2)
    assert torch.all(gr2 > 0)  # plain DPO pushes down the rejected item's shared prefix too ...
    assert torch.allclose(gc2[:2] + gr2[:2], torch.zeros(2))  # ... cancelling the chosen side's push-up
    assert torch.allclose(m1, m2)  # same loss value, different gradients


def test_pair_weight_scales_the_loss() -> None:
    a = torch.tensor([-1.0, -1.0])
    full, _ = pair_loss(a, a, a - 1, a, beta=1.0)
    half, _ = pair_loss(a, a, a - 1, a, beta=1.0, weight=0.5)
    assert torch.isclose(half, full * 0.5)


def test_multilabel_contrastive_ignores_other_positives() -> None:
    s = torch.tensor([-1.0, -1.2, -3.0, -4.0])
    loss = multilabel_contrastive(s, [0, 1])
    neg = s[2:]
    want = torch.stack([-(s[i] - torch.logsumexp(torch.cat([s[i : i + 1], neg]), 0)) for i in (0, 1)]).mean()
    assert torch.isclose(loss, want)
    # each positive competes with the negatives only (no squeezing among relevant items)
    alone = (multilabel_contrastive(s[[0, 2, 3]], [0]) + multilabel_contrastive(s[[1, 2, 3]], [0])) / 2
    assert torch.isclose(loss, alone)
    s2 = s.clone().requires_grad_(True)
    multilabel_contrastive(s2, [0, 1]).backward()
    assert s2.grad is not None and s2.grad[0] < 0 and s2.grad[1] < 0 and torch.all(s2.grad[2:] > 0)


def test_seq_logps_match_a_plain_forward() -> None:
    model = new_model(100, hidden=32, layers=1, seed=0)
    prompt = [BOS, HISTORY, 8, 16, 24, 32, QUERY, SID]
    conts = [[9, 17, 25, 33], [9, 17, 26, 34]]
    got = _seq_logps(model, [prompt], [conts])[0]
    for k, c in enumerate(conts):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + c])).logits[0], -1)
        want = torch.stack([logp[len(prompt) - 1 + j, tok] for j, tok in enumerate(c)])
        torch.testing.assert_close(got[k].detach(), want, atol=2e-5, rtol=1e-4)


def test_alignment_keeps_the_sft_weights_unless_a_round_beats_them() -> None:
    import numpy as np

    from pipeline.align import AlignConfig, PrefPrompt, align
    from pipeline.decode import PrefixTable

    sizes, offsets = [4, 4], [8, 12]
    sids = np.array([[a, b] for a in range(4) for b in range(2)])
    model = new_model(20, hidden=32, layers=1, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [
        PrefPrompt([BOS, HISTORY, 8, 12, QUERY, SID], 1, [1]),
        PrefPrompt([BOS, HISTORY, 9, 13, QUERY, SID], 2, [2]),
    ]
    kw = dict(
        sids=sids,
        table=PrefixTable(sids, sizes),
        codebook_sizes=sizes,
        token_offsets=offsets,
        item_emb=None,
        sft_batches=lambda rng: iter(()),
        cfg=AlignConfig(method="dpo", rounds=1, pool=4, lr=1e-2),
        log=lambda _m: None,
    )
    aligned: list = []
    report = align(model, prompts, validate=lambda m: {"score": 0.5}, start={"score": 0.9}, aligned_out=aligned, **kw)
    assert report["kept"] == "sft"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(aligned) == 1 and any(not torch.equal(before[k], v) for k, v in aligned[0].items())  # still evaluable
    report = align(model, prompts, validate=lambda m: {"score": 0.95}, start={"score": 0.9}, **kw)
    assert report["kept"] == "round 1"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
