"""The Siamese net: its classifier heads reproduce scikit-learn, and model.pt round-trips."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mura_monai.explain import target_layer
from mura_monai.multiview import last_linear
from mura_monai.networks import Embedder, siamese_net
from mura_monai.networks.siamese import EmbeddingHead


def embeddings(seed=0, n=60, dim=16):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    x = rng.normal(size=(n, dim)) + y[:, None] * 0.8
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_heads_reproduce_scikit_learn():
    x, y = embeddings()
    q, _ = embeddings(seed=1, n=20)
    head = EmbeddingHead(16, "knn", k=7).fit(torch.tensor(x), torch.tensor(y))
    knn = KNeighborsClassifier(7, weights="distance").fit(x, y).predict_proba(q)[:, 1]
    ours = torch.sigmoid(head.logits(torch.tensor(q, dtype=torch.float32), "knn")).numpy()
    np.testing.assert_allclose(ours, np.clip(knn, 1e-6, 1 - 1e-6), atol=1e-4)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y).predict_proba(q)[:, 1]
    ours = torch.sigmoid(head.logits(torch.tensor(q, dtype=torch.float32), "logistic")).numpy()
    np.testing.assert_allclose(ours, lr, atol=1e-4)


def test_logistic_head_separates_a_collapsed_embedding():
    # every embedding within 1e-3 of one point, the classes apart along one axis: the triplet
    # losses' collapse; a regularised regression on the raw values would predict the prior
    x, y = embeddings(n=200)
    x = np.array([1.0] + [0.0] * 15) + 1e-3 * x
    head = EmbeddingHead(16).fit(torch.tensor(x), torch.tensor(y))
    p = torch.sigmoid(head.logits(torch.tensor(x, dtype=torch.float32))).numpy()
    assert p[y == 1].mean() - p[y == 0].mean() > 0.2


def test_head_refuses_one_class_and_answers_only_when_fitted():
    head = EmbeddingHead(4)
    with pytest.raises(RuntimeError, match="not fitted"):
        head(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="normal and abnormal"):
        head.fit(torch.randn(5, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="unknown embedding head"):
        EmbeddingHead(4, "svm")


@pytest.mark.parametrize("backbone", ["densenet169", "resnet50"])
def test_fitted_net_round_trips_through_a_state_dict(backbone, tmp_path):
    torch.manual_seed(0)
    net = siamese_net(backbone, dim=32, head="knn", k=3).eval()
    images = torch.randn(6, 1, 64, 64)
    with torch.no_grad():
        z = net.embed(images)
    assert z.shape == (6, 32)
    assert torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)
    net.head.fit(z, torch.tensor([0, 1, 0, 1, 0, 1]))
    with torch.no_grad():
        before = net(images)
    assert before.shape == (6, 1)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    fresh = siamese_net(backbone, dim=32, head="knn", k=3).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert fresh.head.reference.shape == (6, 32)
    with torch.no_grad():
        assert torch.allclose(fresh(images), before, atol=1e-5)
    # the trainer's view optimises exactly the backbone and projection
    assert {id(p) for p in Embedder(net).parameters()} == {id(p) for p in net.parameters()}


def test_early_fusion_and_grad_cam_find_their_layers():
    net = siamese_net("resnet50", dim=16).eval()
    with torch.no_grad():
        net.head.fit(net.embed(torch.randn(4, 1, 64, 64)), torch.tensor([0, 1, 0, 1]))
    assert last_linear(net) is net.classifier  # pooled features -> embedding -> logit
    layer = target_layer(net, probe_size=64)
    assert layer.startswith("backbone.layer4")


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        siamese_net("vgg")
