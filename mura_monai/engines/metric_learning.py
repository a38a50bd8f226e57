"""Training and evaluating Regalla and Kudikala's Siamese embedding models with MONAI's engines.

Three pieces the bundle assembles around a plain ``SupervisedTrainer`` (which optimises the
:class:`~mura_monai.networks.siamese.Embedder` with a triplet loss) and ``SupervisedEvaluator``
(which scores the :class:`~mura_monai.networks.siamese.SiameseNet`'s logits):

* :func:`pk_sampler`: the P x K batches batch-hard mining needs (pytorch-metric-learning's
  ``MPerClassSampler``); a shuffled batch of a skewed split can hold one class only;
* :class:`EmbeddingHeadFitter`: before each validation, embeds the training set and fits the
  classifier on the embeddings, so the validation AUC (and the checkpoint it selects) is that of
  the model the bundle ships;
* :class:`EmbeddingReportWriter`: at evaluation, the embedding's recall@k and the study AUC and
  κ of both classifiers (k-NN and logistic regression) on the same embeddings.

Reference: Regalla S.T., Kudikala S.P., "Research on Musculoskeletal Abnormality Detection using
Deep Learning Techniques", B.Tech report, IIITDM Kurnool, 2023.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys
from pytorch_metric_learning.samplers import MPerClassSampler

from mura_monai.backends import BackendNetwork
from mura_monai.engines.feature_svm import extract_features, gather_rows
from mura_monai.engines.prediction_buffer import batch_records
from mura_monai.metrics import evaluate_predictions

__all__ = ["EMBEDDING_FILE", "EmbeddingHeadFitter", "EmbeddingReportWriter", "pk_sampler", "recall_at_k"]

logger = logging.getLogger(__name__)

EMBEDDING_FILE = "embedding_metrics.json"


def pk_sampler(datalist: list[dict], batch_size: int, samples_per_class: int, label_key: str = "label") -> MPerClassSampler:
    """Batches of P = ``batch_size / samples_per_class`` classes x K = ``samples_per_class`` images.

    The classes are the study labels (normal, abnormal), so P is at most 2: every batch holds K
    normal and K abnormal images, and every anchor has a positive and a negative to mine.

    Raises:
        ValueError: naming the setting that cannot make such batches.
    """
    labels = [int(round(float(d[label_key]))) for d in datalist]
    classes = len(set(labels))
    if samples_per_class < 2:
        raise ValueError(f"samples_per_class must be at least 2 (an anchor needs a positive), got {samples_per_class}")
    if batch_size % samples_per_class or not 2 <= batch_size // samples_per_class <= classes:
        raise ValueError(f"batch_size {batch_size} must be P x samples_per_class ({samples_per_class}) with P "
                         f"between 2 and the {classes} classes of the training labels")
    if len(labels) < batch_size:
        raise ValueError(f"{len(labels)} training images cannot fill one batch of {batch_size}")
    return MPerClassSampler(labels, m=samples_per_class, batch_size=batch_size, length_before_new_iter=len(labels))


def recall_at_k(queries, query_labels, references, reference_labels, ks=(1, 5, 10)) -> dict[str, float]:
    """Share of queries with a same-label reference among their k nearest (Euclidean)."""
    q, r = torch.as_tensor(queries).float(), torch.as_tensor(references).float()
    ql = torch.as_tensor(query_labels).reshape(-1).round().long()
    rl = torch.as_tensor(reference_labels).reshape(-1).round().long()
    if len(q) == 0 or len(r) == 0:
        return {}
    kmax = min(max(ks), len(r))
    nearest = torch.cdist(q, r).topk(kmax, dim=1, largest=False).indices
    hits = rl[nearest] == ql[:, None]
    return {f"recall@{k}": float(hits[:, :min(k, kmax)].any(dim=1).float().mean()) for k in ks}


class EmbeddingHeadFitter:
    """Fits the Siamese net's classifier on the training set's embeddings before each validation.

    Args:
        network: the :class:`~mura_monai.networks.siamese.SiameseNet` the evaluator scores.
        data_loader: the training images without augmentation (the k-NN's references).
        device: where to embed them.
        C: inverse regularisation of the logistic regression.

    Under ``torchrun`` every rank embeds its shard and all ranks fit the same head on all of them.
    """

    def __init__(self, network: torch.nn.Module, data_loader, device: torch.device | str = "cpu", C: float = 1.0) -> None:
        self.network, self.loader, self.device, self.C = network, data_loader, device, C

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, _engine: Engine | None = None) -> None:
        net = getattr(self.network, "module", self.network)
        was_training = net.training
        embeddings, records = gather_rows(*extract_features(net, self.loader, self.device, "embed"))
        net.train(was_training)
        net.head.fit(embeddings, [r["label"] for r in records], C=self.C)
        logger.info("embedding classifier fitted on %d training images", len(records))


class EmbeddingReportWriter:
    """Writes ``embedding_metrics.json`` (and an ``embedding`` section of ``metrics.json``).

    Args:
        output_dir: the evaluation's folder (``metrics.json`` is there when this runs after
            :class:`~mura_monai.engines.MetricsReportWriter`).
        network: the evaluated :class:`~mura_monai.networks.siamese.SiameseNet`.
        ks: the k of recall@k.
        threshold, aggregation: as the bundle's, for the heads' study metrics.

    An evaluation scored by an exported graph (``--backend onnxruntime``) runs the eager network
    beside it: the embeddings come from a hook on the head, and metrics.json's ``embedding``
    section is complete only with them.
    """

    def __init__(self, output_dir: str | Path, network: torch.nn.Module, ks=(1, 5, 10), threshold: float = 0.5,
                 aggregation: str = "mean") -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.ks = tuple(int(k) for k in ks)
        self.threshold, self.aggregation = threshold, aggregation
        self.embeddings: list[torch.Tensor] = []
        self.records: list[dict] = []
        self.document: dict | None = None
        self._collecting = False

    @property
    def head(self):
        return getattr(self.network, "module", self.network).head

    def attach(self, engine: Engine) -> None:
        self.head.register_forward_pre_hook(self._capture)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_STARTED, self._collect)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add_batch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _capture(self, _module, args) -> None:
        if self._collecting:  # the evaluator's own forward passes, not another handler's calls
            self.embeddings.append(args[0].detach().float().cpu())

    def _collect(self, _engine: Engine) -> None:
        self._collecting = True

    def _reset(self, engine: Engine) -> None:
        self.embeddings, self.records = [], []
        if isinstance(getattr(engine, "network", None), BackendNetwork):
            # an exported graph hides the embedding: the eager network runs beside it for the hook
            engine.network.eager_too = True

    def _add_batch(self, engine: Engine) -> None:
        self._collecting = False
        batch = engine.state.batch
        self.records += batch_records(batch, int(torch.as_tensor(batch[CommonKeys.IMAGE]).shape[0]))

    def write(self, _engine: Engine | None = None) -> dict:
        head = self.head
        embeddings = torch.cat(self.embeddings) if self.embeddings else torch.zeros(0, head.dim)
        labels = [r["label"] for r in self.records]
        doc: dict = {"n_images": len(self.records), "dim": head.dim, "head": head.method, "k": head.k,
                     "n_references": int(head.reference.shape[0]),
                     # unit vectors lie up to 2 apart; near 0 means the embedding collapsed to a point
                     "mean_pairwise_distance": float(torch.pdist(embeddings).mean()) if len(embeddings) > 1 else 0.0,
                     "recall_at_k": recall_at_k(embeddings, labels, head.reference.cpu(), head.reference_labels.cpu(),
                                                self.ks),
                     "heads": {}}
        with torch.no_grad():
            for method in ("logistic", "knn"):
                probabilities = torch.sigmoid(head.logits(embeddings.to(head.reference.device), method)).cpu().tolist()
                records = [r | {"probability": p} for r, p in zip(self.records, probabilities)]
                result = evaluate_predictions(records, self.threshold, self.aggregation, n_bootstrap=0)
                doc["heads"][method] = {k: result["study"][k] for k in ("auc", "kappa", "accuracy", "sensitivity",
                                                                       "specificity")}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / EMBEDDING_FILE).write_text(json.dumps(doc, indent=2))
        metrics = self.output_dir / "metrics.json"
        if metrics.is_file():
            merged = json.loads(metrics.read_text()) | {"embedding": doc}
            metrics.write_text(json.dumps(merged, indent=2, allow_nan=True))
        logger.info("embedding: %s; study AUC logistic %.3f, k-NN %.3f", doc["recall_at_k"],
                    doc["heads"]["logistic"]["auc"], doc["heads"]["knn"]["auc"])
        self.document = doc
        return doc
