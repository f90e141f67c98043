"""The CLI's one-line errors, with the rank named under torchrun."""

from __future__ import annotations

import pytest

from md.cli.group import error_prefix
from tests.conftest import run_cli


def test_single_process_errors_are_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert error_prefix() == "md: error:"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert error_prefix() == "md: error:"


def test_ranks_tag_their_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert error_prefix() == "md: error (rank 1):"
    out = run_cli("store", "info", "/nonexistent/x.zarr", expect=2)
    assert "md: error (rank 1): " in out and "/nonexistent/x.zarr" in out
