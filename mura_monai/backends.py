"""What runs a bundle's network when it scores images: eager PyTorch, TorchScript or ONNX Runtime.

Scoring is a forward pass and nothing else, so it can run on an exported graph
(:mod:`mura_monai.export`): on a CPU, ONNX Runtime fuses convolutions with their normalisation and
activation and runs about 1.5-2x as many images per second as eager PyTorch
(``benchmarks/results/inference.json``). Everything that needs the network itself keeps the eager
module, which every predictor still loads: heatmaps (a backward pass), zoom to attention, the
ensemble's router, and early view fusion (hooks on the classifier's input).

A network that decides on each image inside its forward pass (the attention-guided net's crop,
the routed classifier's choice of part model) is exported in parts (:mod:`mura_monai.export`);
:class:`HybridRunner` runs each part's file in the runner of its format and the decisions
between them in the eager network's own Python, so that such a bundle scores on TorchScript or
ONNX Runtime as transparently as a single-file one.

A network that takes the patient's age and sex beside the image is exported whole with both
inputs; :class:`TorchScriptRunner` and :class:`OnnxRuntimeRunner` pass its ``metadata`` as the
graph's second input and, when none is given, the unknown age and sex for every image, which is
what the eager network's forward reads an absent ``metadata`` as.

``backend = "auto"`` takes the first backend of :data:`AUTO_ORDER` for the device that is
installed and whose export was validated against this very checkpoint; otherwise ``torch``.
A backend asked for by name that cannot run is refused with the reason, never replaced silently.
On CUDA, the torch backend runs under ``torch.autocast`` (float16) and in ``channels_last``
memory format, where tensor cores do their work; on a CPU it runs as trained, in float32.
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mura_monai.constants import BACKENDS
from mura_monai.export import (
    EXPORT_FILES,
    file_sha256,
    files_label,
    hybrid_files,
    not_exportable_reason,
    read_export_record,
)
from mura_monai.metadata_encoding import metadata_vector

__all__ = ["AUTO_ORDER", "BACKENDS", "BackendChoice", "BackendError", "BackendNetwork", "HybridRunner",
           "OnnxRuntimeRunner", "TorchRunner", "TorchScriptRunner", "choose_backend", "evaluation_network", "installed",
           "make_runner", "scoring_backend"]

logger = logging.getLogger(__name__)

# fastest first, as benchmarks/inference.py measured them; ONNX Runtime's CUDA provider is a
# separate package (onnxruntime-gpu), so on CUDA the order holds what the CPU wheel can do
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("onnxruntime", "torchscript", "torch"), "cuda": ("torch",)}
_FORMAT = {"torchscript": "torchscript", "onnxruntime": "onnx"}


class BackendError(ValueError):
    """A backend asked for by name that cannot run here, with the reason and the remedy."""


@dataclass(frozen=True)
class BackendChoice:
    """``path``: the export that runs (one file); ``parts``: a hybrid's ``(part, file)`` pairs instead."""

    name: str
    reason: str
    path: Path | None = None
    parts: tuple[tuple[str, Path], ...] = ()

    def to_json(self) -> dict:
        """What the infer JSON and metrics.json record of the backend that scored."""
        return {"name": self.name, "reason": self.reason}


def installed(backend: str) -> bool:
    return backend != "onnxruntime" or importlib.util.find_spec("onnxruntime") is not None


def _unusable(backend: str, models_dir: Path, record: dict | None, ckpt_sha: str | None,
              parts: Mapping[str, str] | None = None) -> str | None:
    """Why an export-based backend cannot run this checkpoint, or None when it can. ``parts``:
    a hybrid's part files (part -> file name), each of which must be the file validated."""
    if not installed(backend):
        return "onnxruntime is not installed (pip install onnxruntime)"
    fmt = _FORMAT[backend]
    files = dict(parts) if parts else {None: EXPORT_FILES[fmt]}
    remedy = "run `mura-monai export --bundle <bundle>`"
    for name in files.values():
        if not (models_dir / name).is_file():
            return f"no {models_dir / name} ({remedy})"
    label = files_label(list(files.values()))
    entry = (record or {}).get("formats", {}).get(fmt)
    if entry is None or ("parts" in entry) != bool(parts):
        return f"{label} was never validated ({remedy})"
    if record.get("checkpoint", {}).get("sha256") != ckpt_sha:
        return f"{label} was validated against another model.pt ({remedy} again)"
    if parts and list(entry["parts"]) != list(parts):  # e.g. model_settings.json's output_stage changed since
        return f"{label} was validated as parts {', '.join(entry['parts'])}, not these ({remedy} again)"
    for part, name in files.items():
        validated = entry if part is None else entry["parts"].get(part)
        if validated is None or validated.get("file") != name:
            return f"{name} was never validated ({remedy})"
        if validated.get("sha256") != file_sha256(models_dir / name):
            return f"{name} changed after its validation ({remedy} again)"
    if entry.get("max_abs_diff") is None:
        return f"{label} did not run in its validation: {entry.get('error', 'no result recorded')}"
    if not entry.get("validated"):
        return f"{label} differs from model.pt by {entry['max_abs_diff']:.2e} in probability"
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
        parts = hybrid_files(network, _FORMAT[name]) if network is not None else {}
        why = _unusable(name, models_dir, record, ckpt_sha, parts)
        if why is None:
            reason = "asked for" if requested != "auto" else "fastest validated"
            if parts:
                return BackendChoice(name, reason, parts=tuple((part, models_dir / file) for part, file in parts.items()))
            return BackendChoice(name, reason, models_dir / EXPORT_FILES[_FORMAT[name]])
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


_METADATA = "metadata"


def _with_metadata(inputs: tuple[torch.Tensor, ...], metadata: torch.Tensor | None,
                   names: list[str]) -> tuple[torch.Tensor, ...]:
    """An export's arguments in order: ``inputs``, then the patient metadata where the graph's
    next input is ``metadata`` (an exported graph has no default for it: with none given, the
    unknown age and sex for every image, as the eager forward reads an absent ``metadata``).

    Raises:
        ValueError: for metadata given to a graph without that input, which would score the
            image alone and drop the age and sex unseen.
    """
    if len(names) > len(inputs) and names[len(inputs)] == _METADATA:
        if metadata is None:
            metadata = torch.from_numpy(metadata_vector(None, None)).expand(len(inputs[0]), -1)
        return (*inputs, metadata)
    if metadata is not None:
        raise ValueError(f"the export takes {', '.join(names)}, not the patient metadata given: "
                         "export the bundle again with `mura-monai export`")
    return inputs


class TorchScriptRunner:
    """``model.ts`` as ``ckpt_export`` wrote it (traced at float32); a hybrid's part file takes
    each of its inputs as an argument and gives a tuple when it has several outputs; a metadata
    network's file takes ``metadata`` after the image (see :func:`_with_metadata`)."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self.device = device
        # the traced forward's arguments after self, by the names of the module's own forward
        self.input_names = [a.name for a in self.module.forward.schema.arguments[1:]]

    def __call__(self, *inputs: torch.Tensor, metadata: torch.Tensor | None = None,
                 **_kwargs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        inputs = _with_metadata(inputs, metadata, self.input_names)
        with torch.no_grad():
            out = self.module(*(x.to(self.device) for x in inputs))
        return out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)


class OnnxRuntimeRunner:
    """``model.onnx`` in an ONNX Runtime session with every graph optimisation.

    ``threads`` is the session's intra-op thread count; 0 takes torch's (``torch.get_num_threads``,
    which follows ``OMP_NUM_THREADS``), so that both backends are given the same cores.
    """

    def __init__(self, path: Path, device: torch.device, threads: int = 0, all_outputs: bool = False) -> None:
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
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.threads = options.intra_op_num_threads
        self.all_outputs = bool(all_outputs)

    def __call__(self, *inputs: torch.Tensor, metadata: torch.Tensor | None = None,
                 **_kwargs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The graph's first output (the logits of ``model.onnx``), or with ``all_outputs`` (a
        hybrid's part file, whose inputs are the arguments in order) a tuple of every output
        when there are several. A metadata network's graph gets ``metadata`` as its second
        input (see :func:`_with_metadata`)."""
        inputs = _with_metadata(inputs, metadata, self.input_names)
        feeds = {name: x.detach().to("cpu", torch.float32).contiguous().numpy() for name, x in zip(self.input_names, inputs)}
        out = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return tuple(out) if self.all_outputs and len(out) > 1 else out[0]


class HybridRunner:
    """A network exported in parts (:func:`mura_monai.export.export_bundle`): each part's file in
    a runner of its own, made by ``part_runner`` (the same class serves TorchScript and ONNX
    Runtime parts), and the network's own ``hybrid_forward`` between them, where its decisions
    on the data (the crop, the route) are taken in Python as in its eager forward.

    ``device``: where the decisions run and the images go; the part runners take their inputs
    from there (ONNX Runtime's from the CPU, where its inputs and outputs live).
    """

    def __init__(self, network: torch.nn.Module, paths: Mapping[str, Path],
                 part_runner: Callable[[Path], Callable], device: torch.device) -> None:
        self.network, self.device = network, device
        self.parts = {part: part_runner(Path(path)) for part, path in paths.items()}
        self.threads = next((getattr(r, "threads", None) for r in self.parts.values()), None)

    @classmethod
    def for_backend(cls, backend: str, network: torch.nn.Module, paths: Mapping[str, Path], device: torch.device,
                    threads: int = 0) -> HybridRunner:
        """Parts run by ``torchscript`` (:class:`TorchScriptRunner`, on ``device``) or
        ``onnxruntime`` (:class:`OnnxRuntimeRunner`, the decisions on the CPU)."""
        if backend == "torchscript":
            return cls(network, paths, lambda path: TorchScriptRunner(path, device), device)
        if backend == "onnxruntime":
            return cls(network, paths, lambda path: OnnxRuntimeRunner(path, device, threads, all_outputs=True),
                       torch.device("cpu"))
        raise BackendError(f"no exported parts run on backend {backend!r}")

    def __call__(self, x: torch.Tensor, **_kwargs) -> torch.Tensor:
        with torch.no_grad():
            return self.network.hybrid_forward(x.to(self.device), self.parts).float()


def make_runner(choice: BackendChoice, network: torch.nn.Module, device: torch.device, amp: bool = True,
                channels_last: bool | None = None, threads: int = 0):
    """A callable ``runner(x, **kwargs) -> logits`` for the chosen backend."""
    if choice.parts:
        return HybridRunner.for_backend(choice.name, network, dict(choice.parts), device, threads)
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
