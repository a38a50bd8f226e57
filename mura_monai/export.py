"""Exported networks: a bundle's checkpoint as TorchScript and ONNX, checked before anything runs them.

The files are made the MONAI model-zoo way, by ``monai.bundle``'s own exporters
(``ckpt_export`` for ``models/model.ts``, ``onnx_export`` for ``models/model.onnx``), which
:func:`export_bundle` calls exactly as ``python -m monai.bundle ckpt_export ...`` does, with the
settings the model was trained with. An exported file is only a claim until it is compared with
the checkpoint: :func:`validate_exports` runs the checkpoint's eager network and each export on the
same inputs (two batch sizes, so that a batch dimension frozen by tracing shows) and records the
largest difference in abnormality probability in ``models/export.json``. A backend
(:mod:`mura_monai.backends`) uses an export only when that record says it agreed within
:data:`TOLERANCE` with *this* checkpoint (its SHA-256): a model retrained after its export falls
back to PyTorch instead of running stale weights.

Two networks take a decision on each image inside their forward pass: the attention-guided fusion
net crops each image where its attention lies (a connected-component search in SciPy) and the
routed classifier sends each image to the network of its body part. A single traced graph would
freeze the example image's decision, so they are exported as hybrids: each fixed part of the
network (``hybrid_parts``: the global branch, the local branch, the fusion layer; the router and
each body part's network) as a file of its own, ``models/model.<part>.ts`` and
``models/model.<part>.onnx``, made by the converters MONAI's exporters call
(``convert_to_torchscript``, ``convert_to_onnx``) with the same settings, since those exporters
load a whole checkpoint into a whole network of one input. The decision between the parts stays
in the network's own Python (``hybrid_forward``), which the backend's
:class:`~mura_monai.backends.HybridRunner` calls on the exported parts. The record validates the
whole pipeline against the checkpoint, as for a single file, and keeps each part file's SHA-256.

A network trained with patient metadata takes age and sex beside the image, which MONAI's bundle
exporters do not pass (they trace a network of one input). It is exported whole by the same
converters, as ``models/model.ts`` and ``models/model.onnx`` of two inputs, ``image`` and
``metadata`` (``whole_part``), each with an open batch dimension; the TorchScript file holds the
bundle's metadata and inference config as ``ckpt_export``'s does. Its validation gives the
checkpoint and each export the same images *and* the same metadata vectors (ages and sexes known
and unknown, :data:`VALIDATION_PEOPLE`), recorded under ``metadata`` in ``export.json``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mura_monai.metadata_encoding import metadata_vector
from mura_monai.model_settings import load_model_settings

if TYPE_CHECKING:
    from mura_monai.networks.parts import ExportPart

__all__ = ["EXPORT_FILES", "EXPORT_FORMATS", "EXPORT_RECORD", "OPSET", "TOLERANCE", "VALIDATION_PEOPLE", "ExportError",
           "entry_files", "export_bundle", "export_inputs", "file_sha256", "files_label", "hybrid_files", "hybrid_parts",
           "not_exportable_reason", "part_file", "read_export_record", "validate_exports", "whole_part"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS: tuple[str, ...] = ("torchscript", "onnx")
EXPORT_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
EXPORT_RECORD = "export.json"
# ONNX opset of the exported graphs: 18 is the newest that both torch's exporter and every
# ONNX Runtime release since 1.14 handle; the file's own opset_import says the same
OPSET = 18
# the largest difference in abnormality probability an export may show against its checkpoint
TOLERANCE = 1e-4
# the batch of the example input the exporters trace: torch.export fixes a dimension whose example
# size is 1 (its 0/1 specialisation), which left the SVM head's ONNX output at batch 1
EXAMPLE_BATCH = 2
# the part name of a network exported whole, in the file maps of the validation
_WHOLE = ""
# networks with no faithful exported graph, by class name, with the reason: export_bundle refuses
# them in one line and backend auto scores them with torch. None at present (the networks that
# decide on the data are exported in parts, the metadata network with its two inputs).
_NOT_EXPORTABLE: dict[str, str] = {}
# the ages and sexes a metadata network is validated on, one per image in turn: a metadata vector
# of each kind (age known or not, sex M, F or unknown)
VALIDATION_PEOPLE: tuple[tuple[float | None, str | None], ...] = (
    (20.0, "F"), (85.0, "M"), (None, None), (47.0, None), (None, "F"))


class ExportError(RuntimeError):
    """A bundle that cannot be exported or validated, with the reason in one line."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def not_exportable_reason(network: torch.nn.Module) -> str | None:
    """Why a network has no faithful exported graph, or None when it has one."""
    return _NOT_EXPORTABLE.get(type(network).__name__)


def hybrid_parts(network: torch.nn.Module) -> dict:
    """A hybrid network's fixed parts (name -> :class:`~mura_monai.networks.parts.ExportPart`),
    exported one file each; empty for a network exported whole."""
    parts = getattr(network, "hybrid_parts", None)
    return dict(parts()) if callable(parts) else {}


def whole_part(network: torch.nn.Module) -> ExportPart | None:
    """A network exported whole that takes more than the image (its ``whole_part``: its inputs
    and the example to trace it on) as one :class:`~mura_monai.networks.parts.ExportPart`, which
    the converters export; None for a network of the image alone, which MONAI's bundle
    exporters take (and for a hybrid, exported in parts)."""
    part = getattr(network, "whole_part", None)
    return part() if callable(part) else None


def export_inputs(network: torch.nn.Module) -> tuple[str, ...]:
    """The inputs of a network's export: ``("image", "metadata")`` for one that takes age and
    sex, else ``("image",)`` (a hybrid's parts have their own)."""
    whole = whole_part(network)
    return tuple(whole.inputs) if whole is not None else ("image",)


def _converted_parts(network: torch.nn.Module) -> dict:
    """What MONAI's converters export (name -> ExportPart): a hybrid's parts, or a network of
    several inputs whole (under the name ``_WHOLE``); empty for one that MONAI's bundle exporters
    take whole."""
    whole = whole_part(network)
    return {_WHOLE: whole} if whole is not None else hybrid_parts(network)


def _graph_file(part: str, fmt: str) -> str:
    return EXPORT_FILES[fmt] if part == _WHOLE else part_file(part, fmt)


def part_file(part: str, fmt: str) -> str:
    """``model.<part>.ts`` / ``model.<part>.onnx``: a body part by its short name (``XR_ELBOW``:
    ``model.elbow.onnx``)."""
    return f"model.{part.removeprefix('XR_').lower()}{Path(EXPORT_FILES[fmt]).suffix}"


def hybrid_files(network: torch.nn.Module, fmt: str) -> dict[str, str]:
    """Part name -> its file of ``fmt``, for a hybrid network; empty for one exported whole."""
    return {part: part_file(part, fmt) for part in hybrid_parts(network)}


def entry_files(entry: dict) -> list[str]:
    """The files a format's record entry vouches for: its one file, or a hybrid's part files."""
    return [p["file"] for p in entry["parts"].values()] if "parts" in entry else [entry["file"]]


def files_label(names: list[str]) -> str:
    """One name for a list of files: ``model.onnx``, or ``model.{global,local,fusion}.onnx``."""
    if len(names) == 1:
        return names[0]
    suffix = Path(names[0]).suffix
    stems = [name.removeprefix("model.").removesuffix(suffix) for name in names]
    return f"model.{{{','.join(stems)}}}{suffix}"


def read_export_record(models_dir: str | Path) -> dict | None:
    path = Path(models_dir) / EXPORT_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _parser(bundle_dir: Path, models_dir: Path):
    """The bundle's inference config with the checkpoint's recorded settings, as inference reads it."""
    from mura_monai.inference import read_inference_config

    parser = read_inference_config(bundle_dir, models_dir)
    parser["device"] = "cpu"
    settings = {k: v for k, v in load_model_settings(models_dir).items() if k in parser.get()}
    for key, value in settings.items():
        parser[key] = value
    return parser, settings


def _input_shape(parser) -> list[int]:
    size = int(parser.get_parsed_content("image_size"))
    return [EXAMPLE_BATCH, int(parser.get_parsed_content("in_channels")), size, size]


def _key_in_checkpoint(ckpt: Path) -> str:
    """``model`` for a checkpoint saved as ``{"model": state}``, empty for a bare state dict."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return "model" if isinstance(state, dict) and isinstance(state.get("model"), dict) else ""


def _eager_network(parser, ckpt: Path) -> torch.nn.Module:
    from mura_monai.inference import load_weights

    return load_weights(parser.get_parsed_content("network_def"), ckpt, "cpu")


def export_bundle(bundle_dir: str | Path, models_dir: str | Path | None = None,
                  formats: Sequence[str] = EXPORT_FORMATS, opset: int = OPSET, validate: bool = True,
                  images: Sequence[str | Path] = ()) -> dict:
    """Write ``model.ts`` and/or ``model.onnx`` beside the checkpoint with MONAI's bundle
    exporters (a hybrid network: ``model.<part>.ts`` and/or ``model.<part>.onnx`` per part; a
    network of image and metadata: ``model.ts`` and/or ``model.onnx`` of both inputs; see
    :func:`_export_parts`), then validate them (see :func:`validate_exports`); returns the export
    record.

    Raises:
        ExportError: for a network that cannot be exported faithfully, or an unknown format.
        FileNotFoundError: naming a missing checkpoint.
    """
    from monai.bundle import ckpt_export, onnx_export

    bundle_dir = Path(bundle_dir).resolve()
    models_dir = Path(models_dir).resolve() if models_dir else bundle_dir / "models"
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown or not formats:
        raise ExportError(f"export formats must be among {list(EXPORT_FORMATS)}, got {list(formats)}")
    ckpt = models_dir / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"bundle has no trained model: {ckpt} (train it first)")
    parser, settings = _parser(bundle_dir, models_dir)
    definition = parser.get_parsed_content("network_def")
    reason = not_exportable_reason(definition)
    if reason:
        raise ExportError(f"{bundle_dir.name} is not exported: {reason}; it runs on the torch backend")
    if _converted_parts(definition):
        _export_parts(_eager_network(parser, ckpt), bundle_dir, models_dir, parser, formats, opset)
        logger.info("exported %s of %s%s to %s", ", ".join(formats), bundle_dir.name,
                    " in parts" if hybrid_parts(definition) else "", models_dir)
        if not validate:
            return read_export_record(models_dir) or {}
        return validate_exports(bundle_dir, models_dir, formats=formats, images=images)
    common = {
        "net_id": "network_def", "ckpt_file": str(ckpt), "meta_file": str(bundle_dir / "configs" / "metadata.json"),
        "config_file": str(bundle_dir / "configs" / "inference.json"), "key_in_ckpt": _key_in_checkpoint(ckpt),
        "input_shape": _input_shape(parser), "use_trace": True,
        # the recorded settings and folders, as config overrides the exporters pass to the parser
        "bundle_root": str(bundle_dir), "ckpt_dir": str(models_dir), "device": "cpu", **settings,
    }
    with _quiet_exporters():
        if "torchscript" in formats:
            ckpt_export(filepath=str(models_dir / EXPORT_FILES["torchscript"]), **common)
        if "onnx" in formats:
            onnx_export(filepath=str(models_dir / EXPORT_FILES["onnx"]), **common, converter_kwargs={
                "input_names": ["image"], "output_names": ["logits"], "opset_version": int(opset), "dynamo": True,
                # torch.export's own spelling (the image's first dimension, named): dynamic_axes is
                # only converted to it, and that conversion is deprecated
                "dynamic_shapes": [{0: "batch"}]})
    logger.info("exported %s of %s to %s", ", ".join(formats), bundle_dir.name, models_dir)
    if not validate:
        return read_export_record(models_dir) or {}
    return validate_exports(bundle_dir, models_dir, formats=formats, images=images)


def _export_parts(network: torch.nn.Module, bundle_dir: Path, models_dir: Path, parser, formats: Sequence[str],
                  opset: int) -> None:
    """Each part of a hybrid network to its files, or a network of image and metadata whole to
    ``model.ts`` / ``model.onnx``, with the converters MONAI's ``ckpt_export`` and
    ``onnx_export`` call, with their settings (traced on a uniform random example of the input
    shape; the TorchScript file holds the bundle's metadata and inference config; ONNX opset
    ``opset`` by torch's dynamo exporter, every input's first dimension the open ``batch``).
    Those commands take neither a part's weights (they load the whole checkpoint into the
    whole network) nor a graph of two inputs (the fusion layer, the metadata network), hence
    the converters."""
    import onnx
    from monai.bundle import ConfigParser
    from monai.data import save_net_with_metadata
    from monai.networks.utils import convert_to_onnx, convert_to_torchscript

    image = torch.rand(_input_shape(parser))
    meta = ConfigParser.load_config_file(str(bundle_dir / "configs" / "metadata.json"))
    config = bundle_dir / "configs" / "inference.json"
    extra_files = {f"{config.stem}.json": json.dumps(ConfigParser.load_config_file(str(config))).encode()}
    with _quiet_exporters():
        for name, part in _converted_parts(network).items():
            example = part.example(image)
            if "torchscript" in formats:
                traced = convert_to_torchscript(part.module, inputs=example, use_trace=True)
                about = {"network": type(network).__name__, "part": name, "inputs": list(part.inputs),
                         "outputs": list(part.outputs)}
                save_net_with_metadata(traced, str(models_dir / _graph_file(name, "torchscript")),
                                       include_config_vals=False, append_timestamp=False,
                                       meta_values={**meta, "hybrid_part": about} if name != _WHOLE else meta,
                                       more_extra_files=extra_files)
            if "onnx" in formats:
                graph = convert_to_onnx(part.module, inputs=example, input_names=list(part.inputs),
                                        output_names=list(part.outputs), opset_version=int(opset), use_trace=True,
                                        dynamo=True, dynamic_shapes=[{0: "batch"} for _ in example])
                onnx.save(graph, str(models_dir / _graph_file(name, "onnx")))


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """The exporters' chatter kept out of the user's output: MONAI logs the whole argument list to
    stdout, torch's exporter prints its progress and that torchvision's detection operators are
    not registered (no network here uses them), and ONNX Script logs every constant it did not
    fold; torch warns that two inputs' batch dimensions share one name, which is what a graph of
    two inputs asks for. Warnings of other kinds still show."""
    quiet = {"monai.bundle.scripts": logging.WARNING, "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING,
             "torch.onnx._internal.exporter._registration": logging.ERROR}
    loggers = [logging.getLogger(name) for name in quiet]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(max(log.getEffectiveLevel(), quiet[log.name]))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
            # a graph of two inputs (the fusion layer, image and metadata) names both batch dimensions "batch", as meant
            warnings.filterwarnings("ignore", message=".*The axis name: batch will not be used", category=UserWarning)
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _validation_inputs(parser, images: Sequence[str | Path]) -> torch.Tensor:
    """Prepared radiographs when given, else seeded noise of the network's input shape: either
    way the same tensors go through the checkpoint and every export."""
    if images:
        prepare = parser.get_parsed_content("preprocessing")
        return torch.stack([torch.as_tensor(prepare({"image": str(p)})["image"]).float() for p in images])
    shape = _input_shape(parser)
    generator = torch.Generator().manual_seed(0)
    return torch.randn([3, *shape[1:]], generator=generator)


def _probabilities(logits) -> np.ndarray:
    logits = torch.as_tensor(logits)
    return torch.sigmoid(logits.float().reshape(logits.shape[0], -1)[:, 0]).numpy()


def _validation_people(n: int) -> list[tuple[float | None, str | None]]:
    """The age and sex of each of ``n`` validation images: :data:`VALIDATION_PEOPLE` in turn."""
    return [VALIDATION_PEOPLE[i % len(VALIDATION_PEOPLE)] for i in range(n)]


def _metadata_vectors(people: Sequence[tuple[float | None, str | None]]) -> torch.Tensor:
    """The network's metadata input of each person, as inference makes it of a DICOM header."""
    return torch.from_numpy(np.stack([metadata_vector(age, sex) for age, sex in people]))


def _batches(x: torch.Tensor, metadata: torch.Tensor | None = None) -> list[tuple[torch.Tensor, dict]]:
    """The inputs in two batch sizes (all of them, then one), each as the images and the keyword
    inputs beside them (a metadata network's ``metadata``, of the same images): an export
    traced at batch 1 must give the same answers at another."""
    sizes = [len(x), 1] if len(x) > 1 else [len(x)]
    return [(x[:n], {} if metadata is None else {"metadata": metadata[:n]}) for n in sizes]


def validate_exports(bundle_dir: str | Path, models_dir: str | Path | None = None,
                     formats: Sequence[str] = EXPORT_FORMATS, images: Sequence[str | Path] = (),
                     tolerance: float = TOLERANCE) -> dict:
    """Compare each export's abnormality probabilities with the checkpoint's on the same inputs
    and write ``models/export.json``: per format its file's SHA-256 (a hybrid's: each part
    file's, under ``parts``), the largest difference, and whether it is within ``tolerance``.
    A hybrid is validated whole: its part files run around the network's own decisions, as the
    backend runs them. A metadata network and its exports get the same metadata vectors too
    (:data:`VALIDATION_PEOPLE`, recorded under ``metadata``). Runs on the CPU, where every
    backend can run.

    An export that fails to load or run is recorded as not validated, with its ``error``.

    Raises:
        ExportError: for a network that has no faithful export (files made of it are not checked).
        FileNotFoundError: naming a missing checkpoint or export file.
    """
    bundle_dir = Path(bundle_dir).resolve()
    models_dir = Path(models_dir).resolve() if models_dir else bundle_dir / "models"
    ckpt = models_dir / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"bundle has no trained model: {ckpt} (train it first)")
    parser, settings = _parser(bundle_dir, models_dir)
    network = _eager_network(parser, ckpt)
    reason = not_exportable_reason(network)
    if reason:  # files someone made of it anyway are not a faithful export, whatever they answer on noise
        raise ExportError(f"{bundle_dir.name} is not exported: {reason}; it runs on the torch backend")
    files = {fmt: hybrid_files(network, fmt) or {_WHOLE: EXPORT_FILES[fmt]} for fmt in formats}
    takes_metadata = "metadata" in export_inputs(network)
    for fmt in formats:  # named before any input is prepared or run
        for name in files[fmt].values():
            if not (models_dir / name).is_file():
                raise FileNotFoundError(f"no {fmt} export to validate: {models_dir / name} "
                                        "(run `mura-monai export` first)")
    x = _validation_inputs(parser, images)
    people = _validation_people(len(x)) if takes_metadata else []
    metadata = _metadata_vectors(people) if takes_metadata else None
    batches = _batches(x, metadata)
    with torch.no_grad():
        reference = [_probabilities(network(b, **inputs)) for b, inputs in batches]
    record = read_export_record(models_dir) or {}
    if record.get("checkpoint", {}).get("sha256") != (ckpt_sha := file_sha256(ckpt)):
        record = {}  # formats validated against another checkpoint say nothing about this one
    record.update({
        "bundle": bundle_dir.name,
        "checkpoint": {"file": ckpt.name, "sha256": ckpt_sha},
        "settings": settings,
        "input_shape": _input_shape(parser)[1:],
        "inputs": f"{len(images)} prepared radiographs" if images else f"{len(x)} images of seeded N(0, 1) noise",
        "batch_sizes": [len(b) for b, _ in batches],
        "tolerance": tolerance,
        "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}",
    })
    parts = hybrid_parts(network)
    if parts:
        record["hybrid"] = {"network": type(network).__name__, "parts": list(parts)}
    else:
        record.pop("hybrid", None)
    if metadata is not None:  # the vectors beside the images, in the images' order
        record["metadata"] = {"graph_inputs": list(export_inputs(network)),
                              "people": [{"age": age, "sex": sex} for age, sex in people],
                              "vectors": [[round(float(v), 6) for v in row] for row in metadata.tolist()]}
    else:
        record.pop("metadata", None)
    formats_done = record.setdefault("formats", {})
    for fmt in formats:
        paths = {part: models_dir / name for part, name in files[fmt].items()}
        entry: dict = _file_entries(paths)
        try:
            _describe(fmt, entry, paths)
            run = _runner(fmt, paths, network)
            diff = max(float(np.abs(run(b, **inputs) - ref).max()) for (b, inputs), ref in zip(batches, reference))
        except Exception as exc:  # noqa: BLE001 (a file that does not load or run is an export that failed)
            # e.g. an ONNX graph exported without a dynamic batch, given the batch of 3
            diff, entry["error"] = None, f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
        entry.update(max_abs_diff=diff, validated=diff is not None and diff <= tolerance, validated_on="cpu")
        formats_done[fmt] = entry
        if diff is None:
            logger.warning("%s export of %s did not run: %s", fmt, bundle_dir.name, entry["error"])
        else:
            log = logger.info if entry["validated"] else logger.warning
            log("%s export of %s: largest probability difference %.2e (%s)", fmt, bundle_dir.name, diff,
                "validated" if entry["validated"] else f"NOT validated: above {tolerance:g}")
    (models_dir / EXPORT_RECORD).write_text(json.dumps(record, indent=2))
    return record


def _file_entries(paths: dict[str, Path]) -> dict:
    """A format's record entry before its validation: its file and SHA-256, or for a hybrid
    (``paths`` by part) each part's under ``parts``."""
    if set(paths) == {_WHOLE}:
        return {"file": paths[_WHOLE].name, "sha256": file_sha256(paths[_WHOLE])}
    return {"parts": {part: {"file": path.name, "sha256": file_sha256(path)} for part, path in paths.items()}}


def _describe(fmt: str, entry: dict, paths: dict[str, Path]) -> None:
    """What the files say of themselves, into their entry: the ONNX opset and open batch per
    file, the runtime's version once (raises for a file that does not load)."""
    for part, path in paths.items():
        facts = _onnx_facts(path) if fmt == "onnx" else {"torch": torch.__version__}
        if part != _WHOLE:
            entry.update({key: facts.pop(key) for key in ("onnxruntime", "torch") if key in facts})
        (entry if part == _WHOLE else entry["parts"][part]).update(facts)


def _onnx_facts(path: Path) -> dict:
    """What the file itself says (its opset, whether the batch dimension of every input and
    output is open), not what was asked of the exporter: a file made by hand with other
    arguments is recorded as it is."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path), load_external_data=False)
    ends = [*model.graph.input, *model.graph.output] if model.graph.input and model.graph.output else []
    dynamic = bool(ends) and all(v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].dim_param
                                 for v in ends)
    return {"opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "onnxruntime": onnxruntime.__version__, "dynamic_batch": dynamic}


def _runner(fmt: str, paths: dict[str, Path], network: torch.nn.Module):
    """The export as the backend that serves it runs it (on the CPU), its logits made
    probabilities: one file, or a hybrid's parts around the network's own decisions."""
    from mura_monai.backends import HybridRunner, OnnxRuntimeRunner, TorchScriptRunner

    cpu = torch.device("cpu")
    backend = "torchscript" if fmt == "torchscript" else "onnxruntime"
    if set(paths) == {_WHOLE}:
        path = paths[_WHOLE]
        run = TorchScriptRunner(path, cpu) if fmt == "torchscript" else OnnxRuntimeRunner(path, cpu)
    else:
        run = HybridRunner.for_backend(backend, network, paths, cpu)
    return lambda x, **inputs: _probabilities(run(x, **inputs))
