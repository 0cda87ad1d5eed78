"""Admission control: a bound on the work in flight, so that overload is refused fast instead of queued.

Why beams: a query's engine work grows with its beam width (one engine request per live beam and level on the
requests path; beams x levels rows in the in-engine search), so a request costs its beam width and the bound
(``GR_MAX_CONCURRENT_BEAMS``) is a number of beams. Without a bound every request is accepted and waits in
vLLM's queue, so past saturation every client's latency grows together and all of them miss their deadline;
with it the accepted ones keep the latency of a saturated-but-not-queued engine and the rest get a 429 in
about a millisecond, which a caller can act on (retry elsewhere, fall back).

No waiting queue on purpose: a queued request holds the caller's deadline while it waits, and a 429 that
takes longer than ~10 ms is no longer a fast error. One event loop owns the counter: no lock is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import Overloaded
from service.metrics import Metrics


class Admission:
    def __init__(self, max_beams: int, retry_after_s: int, metrics: Metrics):
        self.max_beams = max_beams  # 0: unbounded
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.beams = 0
        metrics.admission_limit.set(max_beams)

    @property
    def full(self) -> bool:
        """No request of any width fits now (the guard then refuses before even reading the body)."""
        return bool(self.max_beams) and self.beams >= self.max_beams

    def refuse(self) -> Overloaded:
        self.metrics.admission_rejections.inc()
        return Overloaded(
            f"overloaded: {self.beams} of {self.max_beams} beams in flight; retry after {self.retry_after_s}s "
            "or on another replica",
            self.retry_after_s,
        )

    @contextmanager
    def admit(self, beam_width: int) -> Iterator[None]:
        """Hold ``beam_width`` beams of the budget for the ``with`` block, or raise ``Overloaded`` at once."""
        # A request wider than the whole budget is admitted alone (it costs the whole budget), never starved.
        cost = min(beam_width, self.max_beams) if self.max_beams else beam_width
        if self.max_beams and self.beams + cost > self.max_beams:
            raise self.refuse()
        self.beams += cost
        self.metrics.admission_beams.set(self.beams)
        try:
            yield
        finally:
            self.beams -= cost
            self.metrics.admission_beams.set(self.beams)
