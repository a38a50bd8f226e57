"""The bagged-SVM head computes what scikit-learn computes, and saves/loads like any bundle model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import BaggingClassifier
from sklearn.svm import SVC

from mura_monai.engines.feature_svm import fit_bagged_svm
from mura_monai.networks import BaggedSVMHead, ResNetSVM, resnet50, resnet_svm

N_FEATURES = 24

TEST_CASE_DEFAULT = [{}]
TEST_CASE_SUBSETS = [{"max_samples": 0.5, "max_features": 0.5}]
TEST_CASE_KERNEL = [{"degree": 3, "coef0": 0.5, "C": 3.0, "class_weight": "balanced", "n_estimators": 4}]
CASES = [TEST_CASE_DEFAULT, TEST_CASE_SUBSETS, TEST_CASE_KERNEL]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """ResNet-50 passes on a busy 2-core machine run ~10x slower when 2 intra-op threads compete."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int, n_features: int = N_FEATURES, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features on different scales and offsets (so the standardisation matters), a noisy label, 2 images a patient."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)) * rng.uniform(0.5, 3.0, n_features) + rng.normal(size=n_features)
    y = (x[:, :3].sum(axis=1) + rng.normal(size=n) > x[:, :3].sum(axis=1).mean()).astype(int)
    return x, y, np.arange(n) // 2


@pytest.fixture(scope="module")
def test_features() -> np.ndarray:
    return _data(40, seed=1)[0] * 1.5


def _bag(pipeline):
    return pipeline[-1].calibrated_classifiers_[0].estimator


@pytest.mark.parametrize("params", CASES, ids=["default", "subsets", "kernel"])
def test_decision_function_equals_sklearn(params, test_features):
    pipeline = fit_bagged_svm(*_data(160), **params[0])
    head = BaggedSVMHead(N_FEATURES).load_sklearn(pipeline)
    expected = _bag(pipeline).decision_function(pipeline[0].transform(test_features))
    got = head.decision_function(torch.from_numpy(test_features)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("params", CASES, ids=["default", "subsets", "kernel"])
def test_probability_equals_calibrated_predict_proba(params, test_features):
    pipeline = fit_bagged_svm(*_data(160), **params[0])
    head = BaggedSVMHead(N_FEATURES).load_sklearn(pipeline)
    logits = head(torch.from_numpy(test_features).float())
    assert logits.shape == (len(test_features), 1) and logits.dtype == torch.float32
    np.testing.assert_allclose(torch.sigmoid(logits.double())[:, 0].numpy(), pipeline.predict_proba(test_features)[:, 1],
                               atol=1e-5)


def test_uncalibrated_bag_logit_is_its_decision_function(test_features):
    pipeline = fit_bagged_svm(*_data(160), calibration_folds=1)
    head = BaggedSVMHead(N_FEATURES).load_sklearn(pipeline)
    expected = pipeline[-1].decision_function(pipeline[0].transform(test_features))
    np.testing.assert_allclose(head(torch.from_numpy(test_features))[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_with_weights_only(tmp_path, test_features):
    head = BaggedSVMHead(N_FEATURES).load_sklearn(fit_bagged_svm(*_data(160), max_features=0.5))
    torch.save(head.state_dict(), tmp_path / "head.pt")
    fresh = BaggedSVMHead(N_FEATURES)
    fresh.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    assert fresh.support_vectors.shape == head.support_vectors.shape and fresh.n_estimators == 10
    x = torch.from_numpy(test_features)
    torch.testing.assert_close(fresh(x), head(x), rtol=0, atol=0)


def test_unfitted_head_refuses_to_predict():
    with pytest.raises(RuntimeError, match="not fitted"):
        BaggedSVMHead(N_FEATURES)(torch.zeros(2, N_FEATURES))


def test_rejects_a_bag_of_other_kernels():
    x, y, _ = _data(60)
    bag = BaggingClassifier(SVC(kernel="rbf"), n_estimators=2, random_state=0).fit(x, y)
    with pytest.raises(ValueError, match="poly"):
        BaggedSVMHead(N_FEATURES).load_sklearn(bag)


def test_rejects_svms_fitted_on_another_feature_length():
    with pytest.raises(ValueError, match="24 features"):
        BaggedSVMHead(2048).load_sklearn(fit_bagged_svm(*_data(60), calibration_folds=1))


@pytest.fixture(scope="module")
def fitted_resnet_svm() -> ResNetSVM:
    torch.manual_seed(0)
    net = resnet_svm().eval()
    images = torch.randn(24, 1, 32, 32)
    with torch.no_grad():
        features = net.features(images).double().numpy()
    net.head.load_sklearn(fit_bagged_svm(features, np.arange(24) % 2, n_estimators=3, calibration_folds=2))
    return net


def test_resnet_svm_gives_one_logit_per_image_from_frozen_features(fitted_resnet_svm):
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert fitted_resnet_svm.features(images).shape == (3, 2048)
        assert fitted_resnet_svm(images).shape == (3, 1)
    assert not any(p.requires_grad for p in fitted_resnet_svm.parameters())


def test_resnet_svm_loads_into_a_freshly_built_network(fitted_resnet_svm, tmp_path):
    torch.save(fitted_resnet_svm.state_dict(), tmp_path / "model.pt")
    fresh = resnet_svm().eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), fitted_resnet_svm(images))


def test_backbone_ckpt_takes_a_resnet50_model(tmp_path):
    torch.manual_seed(1)
    trained = resnet50()
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    net = resnet_svm(backbone_ckpt=tmp_path / "model.pt")
    torch.testing.assert_close(net.backbone.layer4[2].conv3.weight, trained.layer4[2].conv3.weight)
    assert isinstance(net.backbone.fc, torch.nn.Identity)
