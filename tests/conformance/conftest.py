from __future__ import annotations

import pytest

from tests.conformance.corpus import build_corpus
from tests.ensemble_support import fitted_ensemble


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return build_corpus(tmp_path_factory.mktemp("conformance") / "corpus")


@pytest.fixture(scope="session")
def conformance_ensemble(synth_root, tmp_path_factory):
    """One fitted random-weight ensemble for `infer` and the listener: fitting costs half a minute."""
    return fitted_ensemble(synth_root, tmp_path_factory.mktemp("conformance_ensemble"))
