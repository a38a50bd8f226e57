from __future__ import annotations

import pytest

from tests.fuzz import seeds


@pytest.fixture(scope="session")
def radiograph_seeds(tmp_path_factory) -> list[bytes]:
    pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return seeds.radiograph_seeds(tmp_path_factory.mktemp("fuzz_seeds"))


@pytest.fixture(scope="session")
def reader_seeds(radiograph_seeds) -> list[bytes]:
    return seeds.reader_seeds(radiograph_seeds)
