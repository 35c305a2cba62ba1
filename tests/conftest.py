import os

import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread is faster, and CI shares 2 cores


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path_factory, monkeypatch):
    """Every test session gets its own dataset cache, so tests never read a stale file."""
    monkeypatch.setenv("DLNN_CACHE_DIR", os.environ.get("DLNN_TEST_CACHE_DIR") or str(tmp_path_factory.getbasetemp() / "data-cache"))
