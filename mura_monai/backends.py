"""What runs a bundle's network when it scores images: eager PyTorch, TorchScript or ONNX Runtime.

Scoring is a forward pass and nothing else, so it can run on an exported graph
(:mod:`mura_monai.export`): on a CPU, ONNX Runtime fuses convolutions with their normalisation and
activation and runs about 1.5-2x as many images per second as eager PyTorch
(``benchmarks/results/inference.json``). Everything that needs the network itself keeps the eager
module, which every predictor still loads: heatmaps (a backward pass), zoom to attention, the
router, and early view fusion (hooks on the classifier's input).

``backend = "auto"`` takes the first backend of :data:`AUTO_ORDER` for the device that is
installed and whose export was validated against this very checkpoint; otherwise ``torch``.
A backend asked for by name that cannot run is refused with the reason, never replaced silently.
On CUDA, the torch backend runs under ``torch.autocast`` (float16) and in ``channels_last``
memory format, where tensor cores do their work; on a CPU it runs as trained, in float32.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mura_monai.constants import BACKENDS
from mura_monai.export import EXPORT_FILES, file_sha256, not_exportable_reason, read_export_record

__all__ = ["AUTO_ORDER", "BACKENDS", "BackendChoice", "BackendError", "BackendNetwork", "OnnxRuntimeRunner",
           "TorchRunner", "TorchScriptRunner", "choose_backend", "evaluation_network", "installed", "make_runner",
           "scoring_backend"]

logger = logging.getLogger(__name__)

# fastest first, as benchmarks/inference.py measured them; ONNX Runtime's CUDA provider is a
# separate package (onnxruntime-gpu), so on CUDA the order holds what the CPU wheel can do
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("onnxruntime", "torchscript", "torch"), "cuda": ("torch",)}
_FORMAT = {"torchscript": "torchscript", "onnxruntime": "onnx"}


class BackendError(ValueError):
    """A backend asked for by name that cannot run here, with the reason and the remedy."""


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str
    path: Path | None = None

    def to_json(self) -> dict:
        """What the infer JSON and metrics.json record of the backend that scored."""
        return {"name": self.name, "reason": self.reason}


def installed(backend: str) -> bool:
    return backend != "onnxruntime" or importlib.util.find_spec("onnxruntime") is not None


def _unusable(backend: str, models_dir: Path, record: dict | None, ckpt_sha: str | None) -> str | None:
    """Why an export-based backend cannot run this checkpoint, or None when it can."""
    if not installed(backend):
        return "onnxruntime is not installed (pip install onnxruntime)"
    fmt = _FORMAT[backend]
    path = models_dir / EXPORT_FILES[fmt]
    remedy = "run `mura-monai export --bundle <bundle>`"
    if not path.is_file():
        return f"no {path} ({remedy})"
    entry = (record or {}).get("formats", {}).get(fmt)
    if entry is None:
        return f"{path.name} was never validated ({remedy})"
    if record.get("checkpoint", {}).get("sha256") != ckpt_sha:
        return f"{path.name} was validated against another model.pt ({remedy} again)"
    if entry.get("sha256") != file_sha256(path):
        return f"{path.name} changed after its validation ({remedy} again)"
    if entry.get("max_abs_diff") is None:
        return f"{path.name} did not run in its validation: {entry.get('error', 'no result recorded')}"
    if not entry.get("validated"):
        return f"{path.name} differs from model.pt by {entry['max_abs_diff']:.2e} in probability"
    return None


def choose_backend(requested: str, models_dir: str | Path, device: torch.device,
                   network: torch.nn.Module | None = None) -> BackendChoice:
    """The backend to score with, and why.

    Raises:
        BackendError: for an unknown name, or a named backend that cannot run this checkpoint.
    """
    if requested not in ("auto", *BACKENDS):
        raise BackendError(f"backend must be auto or one of {list(BACKENDS)}, got {requested!r}")
    if requested == "torch":
        return BackendChoice("torch", "asked for")
    models_dir = Path(models_dir)
    reason = not_exportable_reason(network) if network is not None else None
    if reason:
        if requested != "auto":
            raise BackendError(f"backend {requested} cannot run {type(network).__name__}: {reason}")
        return BackendChoice("torch", f"not exported: {reason}")
    if requested != "auto" and device.type == "cuda" and requested == "onnxruntime" and not _ort_cuda():
        raise BackendError("backend onnxruntime on CUDA needs onnxruntime-gpu (CUDAExecutionProvider); "
                           "use backend torch, which runs with AMP there")
    record = read_export_record(models_dir)
    ckpt = models_dir / "model.pt"
    ckpt_sha = file_sha256(ckpt) if record and ckpt.is_file() else None
    candidates = [requested] if requested != "auto" else list(AUTO_ORDER.get(device.type, ("torch",)))
    skipped = []
    for name in candidates:
        if name == "torch":
            # first in the order (CUDA): no export was looked at, so none was validated
            return BackendChoice("torch", "; ".join(skipped) or f"fastest on {device.type}")
        why = _unusable(name, models_dir, record, ckpt_sha)
        if why is None:
            return BackendChoice(name, "asked for" if requested != "auto" else "fastest validated",
                                 models_dir / EXPORT_FILES[_FORMAT[name]])
        if requested != "auto":
            raise BackendError(f"backend {name} cannot run: {why}")
        skipped.append(f"{name}: {why}")
    return BackendChoice("torch", "; ".join(skipped) or "no other backend for this device")


def _ort_cuda() -> bool:
    if not installed("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class TorchRunner:
    """The eager network: autocast and channels_last on CUDA unless switched off."""

    def __init__(self, network: torch.nn.Module, device: torch.device, amp: bool = True,
                 channels_last: bool | None = None) -> None:
        self.network, self.device = network, device
        self.amp = bool(amp) and device.type == "cuda"
        self.channels_last = device.type == "cuda" if channels_last is None else bool(channels_last)
        if self.channels_last:
            network.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            return self.network(x, **kwargs).float()


class TorchScriptRunner:
    """``model.ts`` as ``ckpt_export`` wrote it (traced at float32)."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self.device = device

    def __call__(self, x: torch.Tensor, **_kwargs) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x.to(self.device)).float()


class OnnxRuntimeRunner:
    """``model.onnx`` in an ONNX Runtime session with every graph optimisation.

    ``threads`` is the session's intra-op thread count; 0 takes torch's (``torch.get_num_threads``,
    which follows ``OMP_NUM_THREADS``), so that both backends are given the same cores.
    """

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        import onnxruntime

        if int(threads) < 0:  # ONNX Runtime accepts a negative count without a word
            raise ValueError(f"onnx_threads must be 0 (torch's thread count) or more, got {threads}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads) or torch.get_num_threads()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.threads = options.intra_op_num_threads

    def __call__(self, x: torch.Tensor, **_kwargs) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def make_runner(choice: BackendChoice, network: torch.nn.Module, device: torch.device, amp: bool = True,
                channels_last: bool | None = None, threads: int = 0):
    """A callable ``runner(x, **kwargs) -> logits`` for the chosen backend."""
    if choice.name == "torchscript":
        return TorchScriptRunner(choice.path, device)
    if choice.name == "onnxruntime":
        return OnnxRuntimeRunner(choice.path, device, threads)
    return TorchRunner(network, device, amp, channels_last)


class BackendNetwork(torch.nn.Module):
    """An evaluator's ``network`` that scores with the chosen backend.

    A bundle's ``evaluating`` workflow hands its evaluator one module; the handlers around it
    (checkpoint loading, model size, hooks on the classifier) need the eager network, so that stays
    the bundle's ``@network`` and is held here (``eval()`` reaches it) while the runner makes the
    logits. With the torch backend the eager network scores as before, under the evaluator's own
    autocast. ``eager_too`` runs the eager network beside an exported one, for a handler whose
    hooks must see every batch (:class:`~mura_monai.engines.EmbeddingReportWriter`).
    """

    def __init__(self, network: torch.nn.Module, choice: BackendChoice, runner=None) -> None:
        super().__init__()
        self.network = network
        self.choice = choice
        self.runner = runner if choice.name != "torch" else None
        self.eager_too = False

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.runner is None:
            return self.network(x, **kwargs)
        if self.eager_too:
            self.network(x, **kwargs)
        # an export was validated at float32: the evaluator's autocast must not reach a TorchScript graph
        with torch.autocast(x.device.type, enabled=False):
            return self.runner(x, **kwargs).to(x.device)


def evaluation_network(network: torch.nn.Module, ckpt_dir: str | Path, device: torch.device, backend: str = "auto",
                       threads: int = 0) -> BackendNetwork:
    """The evaluator's network of a bundle's ``evaluate.json`` (its ``backend`` and ``onnx_threads``).

    Raises:
        BackendError: as :func:`choose_backend`.
    """
    choice = choose_backend(str(backend), ckpt_dir, device, network)
    runner = make_runner(choice, network, device, threads=int(threads)) if choice.name != "torch" else None
    logger.info("the evaluation scores with the %s backend (%s)", choice.name, choice.reason)
    return BackendNetwork(network, choice, runner)


def scoring_backend(engine) -> BackendChoice | None:
    """The backend an Ignite engine scores with, when its network is a :class:`BackendNetwork`
    (None: an engine that runs a plain module, like a training's validation)."""
    network = getattr(engine, "network", None)
    return network.choice if isinstance(network, BackendNetwork) else None
