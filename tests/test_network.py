"""cprfl_zoo.network: an unreachable Hub is found out in seconds, never by a minute of retries.

No test opens a connection: the probe's connection is faked (tests/conftest.py fakes a reachable
Hub for every test; these tests fake the other answers).
"""

from __future__ import annotations

import socket

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from cprfl_zoo import network
from cprfl_zoo.network import _connects as real_connects  # before conftest fakes it


@pytest.fixture
def online_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in (
        "https_proxy",
        "HTTPS_PROXY",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(proxy, raising=False)


def fake_connection(monkeypatch: pytest.MonkeyPatch, answer: bool) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []

    def connects(host: str, port: int, timeout: float) -> bool:
        calls.append((host, port))
        return answer

    monkeypatch.setattr(network, "_connects", connects)
    return calls


def test_offline_mode_needs_no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_connection(monkeypatch, True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert network.hub_unavailable() == "Hugging Face is offline (HF_HUB_OFFLINE is set)"
    assert calls == []


def test_unreachable_hub_is_named_and_the_answer_is_reused(monkeypatch, online_mode) -> None:
    calls = fake_connection(monkeypatch, False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.example:8443")
    reason = network.hub_unavailable(timeout=2)
    assert reason == "the Hugging Face Hub (https://hub.example:8443) did not answer within 2 s"
    assert network.hub_unavailable(timeout=2) == reason
    assert calls == [("hub.example", 8443)]  # probed once


def test_reachable_hub_and_proxies(monkeypatch, online_mode) -> None:
    calls = fake_connection(monkeypatch, True)
    assert network.hub_unavailable() is None
    assert calls == [("huggingface.co", 443)]
    fake_connection(monkeypatch, False)
    monkeypatch.setattr(network, "_probes", {})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert network.hub_unavailable() is None  # the proxy decides; the download's timeouts apply


def test_offline_unless_reachable_switches_offline_mode_for_the_block(
    monkeypatch, online_mode, tmp_path
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    fake_connection(monkeypatch, False)
    with network.offline_unless_reachable() as reason:
        assert reason is not None and huggingface_hub.constants.is_offline_mode()
        with pytest.raises(LocalEntryNotFoundError):
            huggingface_hub.hf_hub_download("timm/test_resnet.r160_in1k", "config.json")
    assert not huggingface_hub.constants.HF_HUB_OFFLINE
    fake_connection(monkeypatch, True)
    monkeypatch.setattr(network, "_probes", {})
    with network.offline_unless_reachable() as reason:
        assert reason is None and not huggingface_hub.constants.HF_HUB_OFFLINE


def test_a_real_probe_of_a_closed_port_says_no() -> None:
    """The connection itself, against a port of this machine that nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        assert real_connects("127.0.0.1", port, 2.0) is False
        s.listen()
        assert real_connects("127.0.0.1", port, 2.0) is True
