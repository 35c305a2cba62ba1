"""open_storage's own promises beyond Optuna's storage contract: what it refuses."""

from __future__ import annotations

import pytest

from dlnn_studies.errors import UsageError
from dlnn_studies.store.storage import open_storage


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize("create_schema", [True, False])
def test_an_in_memory_sqlite_storage_is_refused_with_the_reason(url, create_schema):
    """Every connection to an in-memory SQLite database gets an empty one of its own, so the storage
    came back without tables; no `dlnn` command could see what another one wrote there either."""
    with pytest.raises(UsageError, match=r"in-memory SQLite database.*Use a file, e.g. sqlite:///dlnn.db"):
        open_storage(url, create_schema=create_schema)
