"""The gateway <-> in-engine search contract (service/engine/plugin/protocol.py)."""

from __future__ import annotations

import torch

from service.engine.plugin import protocol


def test_result_round_trip_with_steps() -> None:
    codes = torch.tensor([[3, 1, 0], [2, 7, 1]])
    scores = torch.tensor([-0.25, -1.5])
    steps = [(torch.tensor([[3], [2]]), torch.tensor([-0.125, -0.5])), (codes[:, :2], torch.tensor([-0.25, -1.0]))]
    data = protocol.encode_result(
        codes, scores, steps, decoder_rows=9, step_queries=3, revision=2**40 + 12_345, allowed=17_000_001
    )
    got = protocol.decode_result(data)
    assert got.status == protocol.OK and got.decoder_rows == 9 and got.step_queries == 3
    assert got.revision == 2**40 + 12_345 and got.allowed == 17_000_001  # beyond float32's exact integers
    assert not got.certified and got.bound == float("-inf")
    certified = protocol.decode_result(
        protocol.encode_result(
            codes, scores, [], decoder_rows=1, step_queries=1, revision=0, allowed=2, certified=True, bound=-3.5
        )
    )
    assert certified.certified and certified.bound == -3.5
    assert got.beams == [((3, 1, 0), -0.25), ((2, 7, 1), -1.5)]
    assert got.steps == [[((3,), -0.125), ((2,), -0.5)], [((3, 1), -0.25), ((2, 7), -1.0)]]
    # codes near 2^24 survive float32 exactly
    big = protocol.decode_result(
        protocol.encode_result(
            torch.tensor([[2**23 + 1]]), torch.tensor([0.0]), [], decoder_rows=0, step_queries=1, revision=0, allowed=1
        )
    )
    assert big.beams == [((2**23 + 1,), 0.0)]


def test_status_and_request_parsing() -> None:
    assert protocol.decode_result(protocol.encode_status(protocol.NOT_SEARCHED, 4)).status == protocol.NOT_SEARCHED
    assert protocol.parse_request(None, 20, 64) == protocol.SearchRequest(20)
    ok = protocol.SearchRequest(7, steps=True)
    assert protocol.parse_request(ok.to_kwargs(), 20, 64) == ok
    for bad in (0, 65, "7", True, None):
        assert protocol.parse_request({protocol.KWARGS_KEY: {"beam_width": bad}}, 20, 64) is None
    full = protocol.SearchRequest(5, False, {"category": ["Drama"], "year": {"gte": 1990}}, ((1, 2, 3, 0),), 3, True)
    assert protocol.parse_request(full.to_kwargs(), 20, 64) == full
    assert protocol.parse_request({protocol.KWARGS_KEY: {"beam_width": 5, "top_k": 6}}, 20, 64) is None
    for bad_spec in ({"filters": ["Drama"]}, {"exclude": [["a"]]}, {"exclude": 3}):
        assert protocol.parse_request({protocol.KWARGS_KEY: {"beam_width": 5, **bad_spec}}, 20, 64) is None
