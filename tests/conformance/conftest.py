from __future__ import annotations

import pytest

from tests.conformance.corpus import build_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return build_corpus(tmp_path_factory.mktemp("conformance") / "corpus")
