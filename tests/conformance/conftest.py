from __future__ import annotations

import pytest
import torch

from tests.conformance.corpus import build_corpus
from tests.ensemble_support import one_member_ensemble


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return build_corpus(tmp_path_factory.mktemp("conformance") / "corpus")


@pytest.fixture(scope="session")
def conformance_ensemble(synth_root, tmp_path_factory):
    """The ensemble bundle with one random-weight member (ResNet-50 at 32 px), really fitted.

    One member, not the default two: the corpus runs Grad-CAM on every scored image through
    `infer`, and DenseNet-169's backward pass was three quarters of that time;
    what the corpus tests is the DICOM path around the networks, which one member exercises
    whole (decoding, grouping, calibration, SR, SC). (The listener's pass over the corpus is in
    tests/listener/test_clients.py, beside the other clients.)
    """
    return one_member_ensemble(synth_root, tmp_path_factory.mktemp("conformance_ensemble"))


@pytest.fixture
def one_torch_thread(monkeypatch):
    """Torch on one thread, here and in the processes a test starts: the suite shares 2 cores
    with other work, and OpenMP threads spinning for a busy core made `infer` on the corpus
    8x slower (136 s against 16 s measured); the corpus tests the DICOM path, not throughput."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
