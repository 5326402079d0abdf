"""`open_storage` (`ckpt_core.storage.factory`): the one place that picks a backend for a directory."""

from __future__ import annotations

import pytest

from ckpt_core.storage import open_storage


def test_open_storage_picks_the_backend(tmp_path):
    assert open_storage(tmp_path, None).is_local
    assert open_storage(f"file://{tmp_path}", None).is_local
    assert not open_storage("memory://x", None).is_local
    with pytest.raises(ValueError, match="Protocol not known"):
        open_storage("nosuchproto://bucket/run", None)
