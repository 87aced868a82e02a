"""Model resolution. The hub download is replaced (no network in tests); the import is real."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.model import hub


def test_hf_model_is_imported_once_then_reused(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDA_CACHE_DIR", str(tmp_path))
    calls: list[str] = []

    def fake_download(uri: str) -> Path:
        calls.append(uri)
        return tiny_checkpoint

    monkeypatch.setattr(hub, "download_hf", fake_download)
    messages: list[str] = []
    first = hub.resolve_model(None, progress=messages.append)
    second = hub.resolve_model(hub.OFFICIAL_CHECKPOINT)
    assert first == second and (first / "manifest.json").is_file()
    assert first.is_relative_to(tmp_path / "models")
    assert calls == [hub.OFFICIAL_CHECKPOINT]
    assert any("first use" in m for m in messages)


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    assert hub.resolve_model(str(tmp_path)) == tmp_path


def test_malformed_hf_uri_is_refused() -> None:
    with pytest.raises(ValueError, match="hf://OWNER/REPO/PATH"):
        hub.download_hf("hf://just-a-name")
