"""Offline runs fail fast (issue 15): a hub download is tried again only after errors that can
pass (timeouts, HTTP 429/5xx), never after a failed name lookup or in offline mode."""

import socket
from types import SimpleNamespace

import huggingface_hub
import pytest

from interaction_basis.data import hub

REPO = "org/model"


class _HTTPError(OSError):
    def __init__(self, status: int):
        super().__init__(f"{status} Server Error")
        self.response = SimpleNamespace(status_code=status)


def _name_lookup_failure() -> Exception:
    try:
        try:
            raise socket.gaierror(-3, "Temporary failure in name resolution")
        except socket.gaierror as inner:
            raise ConnectionError("Max retries exceeded with url: /api/models") from inner
    except ConnectionError as err:
        return err


@pytest.fixture
def calls(monkeypatch):
    """Replace the hub with a function raising the queued errors; record the pauses."""
    state = SimpleNamespace(errors=[], n=0, pauses=[])

    def snapshot_download(*args, **kwargs):
        state.n += 1
        raise state.errors[min(state.n, len(state.errors)) - 1]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub.time, "sleep", state.pauses.append)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_offline", lambda: False)
    return state


def test_failed_name_lookup_is_not_retried(calls, tmp_path):
    calls.errors = [_name_lookup_failure()]
    with pytest.raises(hub.HubDownloadError, match="How to fix"):
        hub.download_model(REPO, "a" * 40, tmp_path / "out")
    assert calls.n == 1 and calls.pauses == []


def test_offline_mode_is_not_retried(calls, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_offline", lambda: True)
    calls.errors = [TimeoutError("would pass, but offline nothing is fetched")]
    with pytest.raises(hub.HubDownloadError, match="HF_HUB_OFFLINE is set"):
        hub.download_model(REPO, "a" * 40, tmp_path / "out")
    assert calls.n == 1


@pytest.mark.parametrize(
    "error", [TimeoutError("read timed out"), _HTTPError(503), _HTTPError(429)], ids=str
)
def test_transient_errors_are_retried_with_backoff(calls, tmp_path, error):
    calls.errors = [error]
    with pytest.raises(hub.HubDownloadError):
        hub.download_model(REPO, "a" * 40, tmp_path / "out")
    assert calls.n == hub.HUB_ATTEMPTS
    assert calls.pauses == [hub.HUB_BACKOFF_S * 2**i for i in range(hub.HUB_ATTEMPTS - 1)]


def test_client_errors_are_not_retried(calls, tmp_path):
    calls.errors = [_HTTPError(404)]
    with pytest.raises(hub.HubDownloadError):
        hub.download_model(REPO, "a" * 40, tmp_path / "out")
    assert calls.n == 1


def test_download_rules_leave_retrying_to_hub():
    """Snakemake's retries (a profile's too) would repeat a failed name lookup and double the
    memory asked."""
    from pathlib import Path

    rules = (Path(__file__).resolve().parents[2] / "rules" / "downloads.smk").read_text()
    for rule in ("download_model", "download_dataset"):
        block = rules.split(f"rule {rule}:")[1].split("\nrule ")[0]
        assert "retries: 0" in block and "mem_mb(1000)" in block, block
