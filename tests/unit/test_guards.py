"""The small reliability mechanisms on their own: bearer keys, admission, the fail-fast gate, URL redaction."""

from __future__ import annotations

import time

import pytest

from service.admission import Admission
from service.api.guard import BearerKeys
from service.catalog.store import redacted
from service.errors import Overloaded, Unavailable
from service.failfast import FailFastGate
from service.metrics import Metrics
from service.settings import Settings


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (b"Bearer k1", True),
        (b"bearer k2", True),
        (b"Bearer  k1 ", True),
        (b"Bearer k", False),
        (b"Bearer k1x", False),
        (b"Basic k1", False),
        (b"k1", False),
        (b"Bearer", False),
        (None, False),
    ],
)
def test_bearer_keys(header: bytes | None, ok: bool) -> None:
    assert BearerKeys([b"k1", b"k2"]).accepts(header) is ok


def test_key_file_and_settings_keys(tmp_path) -> None:
    f = tmp_path / "keys"
    f.write_text("# comment\n\n  from-file  \n")
    assert Settings(api_keys=["from-env"], api_keys_file=f).bearer_keys() == [b"from-env", b"from-file"]
    f.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no key"):  # a key file with no key must not turn auth off
        Settings(api_keys_file=f).bearer_keys()
    assert "from-env" not in repr(Settings(api_keys=["from-env"]))  # SecretStr: never printed


def test_admission_counts_beams_and_refuses_past_the_bound() -> None:
    metrics = Metrics.create()
    adm = Admission(60, retry_after_s=2, metrics=metrics)
    with adm.admit(40), adm.admit(20):
        with pytest.raises(Overloaded) as e, adm.admit(1):
            pass
        assert e.value.retry_after_s == 2
        assert adm.beams == 60
    assert adm.beams == 0
    # wider than the whole bound: admitted alone, costing the whole bound
    with adm.admit(64), pytest.raises(Overloaded), adm.admit(1):
        pass
    assert metrics.admission_rejections._value.get() == 2
    with Admission(0, 1, metrics).admit(10_000):  # 0: unbounded
        pass


def test_fail_fast_gate_opens_then_lets_one_probe_through() -> None:
    gate = FailFastGate("redis", window_s=0.05)
    assert gate.enter() is False
    gate.failed()
    with pytest.raises(Unavailable):
        gate.enter()
    time.sleep(0.06)
    assert gate.enter() is True  # the probe
    with pytest.raises(Unavailable):  # only one at a time
        gate.enter()
    gate.succeeded()
    assert gate.enter() is False and not gate.open


def test_redacted_urls() -> None:
    assert redacted("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted("rediss://u:pw@h:6380/0?ssl_ca_certs=/etc/ca.pem") == "rediss://u:***@h:6380/0?***"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"
