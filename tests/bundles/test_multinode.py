"""Every bundle's multi_gpu_train.json under ``torchrun --nnodes 2`` with a c10d rendezvous.

Two launchers started together on this machine stand for two nodes of one CPU process each
(Gloo), every "node" with its own ``--ckpt_dir`` and ``--output_dir`` as on hosts that share
nothing but the dataset path. densenet169_wbce (the baseline) trains one tiny epoch through
MONAI's bundle CLI; an extra config file appended to ``training`` has each rank write what it
trained to ``output_dir/rank<RANK>.json``. The other bundles' multi-GPU configs are built, not
trained, on both ranks by ``tests.bundles.multinode_probe``.

c10d numbers the nodes itself (by address, then launcher pid), so either launcher may hold
rank 0: the tests find out which from the rank files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import select
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from mura_monai.networks import densenet169
from tests.bundles.bundle_runner import BUNDLES, read_json, torchrun_nodes

NODES = 2
REPO = BUNDLES.parent
TIMEOUT_S = 300
BUNDLE = "densenet169_wbce"
TINY = ["--image_size", "32", "--max_epochs", "1", "--batch_size", "8", "--num_workers", "0"]
PROBED = ["resnet50", "vgg19", "resnet_svm", "siamese_triplet", "fusionnet_agcnn", "efficientnet_b0_router"]
# what only global rank 0 builds: the writers of checkpoints, summaries and logs
RANK0_ONLY = {"CheckpointSaver", "TensorBoardStatsHandler", "TrainingSummaryWriter"}

# appended to the bundle's own training run: after trainer.run(), each rank records what it trained
RANK_RECORD = {
    "+imports": ["$import hashlib", "$import json", "$import os", "$import pathlib"],
    "+training": [
        "$pathlib.Path(@output_dir).mkdir(parents=True, exist_ok=True)",
        "$pathlib.Path(@output_dir, 'rank' + os.environ['RANK'] + '.json').write_text(json.dumps({"
        "'rank': torch.distributed.get_rank(), 'world_size': torch.distributed.get_world_size(), "
        "'backend': torch.distributed.get_backend(), 'device': str(@torch_device), "
        "'env': {k: os.environ.get(k) for k in ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'GROUP_RANK', 'MURA_TEST_NODE']}, "
        "'epochs': @train#trainer.state.epoch, 'iterations': @train#trainer.state.iteration, "
        "'train_shard': [r['image'] for r in @train#dataset#data], "
        "'parameters_sha256': hashlib.sha256(b''.join(p.detach().cpu().numpy().tobytes() "
        "for p in @network_def.parameters())).hexdigest()}))",
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the launcher (its agent stops the workers it started), SIGKILL if that is not enough."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_nodes(rdzv_id: str, node_args: list[list[str]], cwd: Path, work: Path, timeout: int = TIMEOUT_S) -> list[Path]:
    """Start one ``torchrun_nodes`` launcher per node at once, node ``n`` running the module and
    arguments ``node_args[n]``, and wait for all; returns their logs.

    Fails naming the node whose log says why: the first that exits non-zero (the others are then
    stopped: they would wait for it in a collective), or the ones still running at the timeout.
    """
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    assert len(node_args) == NODES
    logs = [work / f"node{n}.log" for n in range(NODES)]
    procs = []
    try:
        for node, log in enumerate(logs):
            with log.open("w") as out:
                procs.append(subprocess.Popen([*torchrun_nodes(NODES, node, endpoint, rdzv_id), *node_args[node]], cwd=cwd,
                                              env={**env, "MURA_TEST_NODE": f"node{node}"}, stdout=out,
                                              stderr=subprocess.STDOUT))
        # wait on the processes' pidfds: woken by the first exit, no polling
        pending = {os.pidfd_open(p.pid): n for n, p in enumerate(procs)}
        failed = None
        deadline = os.times().elapsed + timeout
        while pending and failed is None:
            ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline - os.times().elapsed))
            if not ready:
                break
            for fd in ready:
                node = pending.pop(fd)
                os.close(fd)
                if procs[node].wait() != 0:
                    failed = node
        for fd in pending:
            os.close(fd)
        if failed is not None:
            pytest.fail(f"node{failed} exited with {procs[failed].returncode}; its log ({logs[failed]}):\n"
                        + _log_tail(logs[failed]))
        if pending:
            hung = sorted(pending.values())
            pytest.fail(f"{', '.join(f'node{n}' for n in hung)} still running after {timeout} s; "
                        + "\n".join(f"node{n}'s log ({logs[n]}):\n{_log_tail(logs[n])}" for n in hung))
    finally:
        for proc in procs:
            _stop(proc)
    return logs


def parameters_sha256(parameters) -> str:
    """The rank record's hash: every parameter's bytes, in ``parameters()`` order."""
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in parameters)).hexdigest()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _assert_disjoint_shards(shards: list[list[str]], items: list[str]) -> None:
    """Equal shares that cover ``items``; only rank_shard's padding (to a multiple of the world) repeats."""
    assert len(shards) == NODES and all(len(s) == math.ceil(len(items) / NODES) for s in shards)
    assert set().union(*shards) == set(items)
    assert len(set(shards[0]) & set(shards[1])) == (-len(items)) % NODES


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """12 patients: 32 training images (an even split over 2 ranks) and both classes among the valid studies."""
    from mura_monai.data.synthetic import generate_mura_root

    base = tmp_path_factory.mktemp("multinode_root")
    summary = generate_mura_root(base / "mura", patients=12, seed=0)
    assert summary["splits"]["train"]["images"] % NODES == 0
    return base / "mura"


@pytest.fixture(scope="module")
def two_node_training(root, tmp_path_factory) -> dict:
    """densenet169_wbce trained by two nodes; ``by_rank[r]``: rank r's record and its node's folder."""
    work = tmp_path_factory.mktemp("multinode_train")
    record = work / "rank_record.json"
    record.write_text(json.dumps(RANK_RECORD, indent=1))
    configs = str(["configs/train.json", "configs/multi_gpu_train.json", str(record)])
    nodes = [work / f"node{n}" for n in range(NODES)]
    # the same command on every node, each with its own folders (another host's --ckpt_dir)
    node_args = [["monai.bundle", "run", "training", "--meta_file", "configs/metadata.json", "--config_file", configs,
                  "--dataset_dir", str(root), "--ckpt_dir", str(node / "models"), "--output_dir", str(node / "out"), *TINY]
                 for node in nodes]
    run_nodes("densenet169-train", node_args, BUNDLES / BUNDLE, work)
    by_rank = {}
    for node in nodes:
        records = sorted((node / "out").glob("rank*.json"))
        assert len(records) == 1, f"{node.name} should have run one rank, its records: {records}"
        rank = read_json(records[0])
        assert records[0].name == f"rank{rank['rank']}.json" and rank["env"]["MURA_TEST_NODE"] == node.name
        by_rank[rank["rank"]] = {"record": rank, "node": node}
    assert sorted(by_rank) == list(range(NODES))
    return {"by_rank": by_rank, "root": root}


def test_two_nodes_form_one_world_of_two_ranks(two_node_training):
    for rank, seen in two_node_training["by_rank"].items():
        record = seen["record"]
        assert record["world_size"] == NODES and record["env"]["WORLD_SIZE"] == str(NODES)
        assert record["env"]["RANK"] == str(rank)
        # one process per node: each is its node's local rank 0, so its device must not come from RANK
        assert record["env"]["LOCAL_RANK"] == "0"
        assert record["backend"] == "gloo" and record["device"] == "cpu"
    assert {s["record"]["env"]["GROUP_RANK"] for s in two_node_training["by_rank"].values()} == {"0", "1"}


def test_ranks_trained_disjoint_shards_of_the_training_images(two_node_training):
    images = (two_node_training["root"] / "MURA-v1.1" / "train_image_paths.csv").read_text().split()
    by_rank = two_node_training["by_rank"]
    shards = [by_rank[r]["record"]["train_shard"] for r in range(NODES)]
    _assert_disjoint_shards(shards, [str(two_node_training["root"] / i) for i in images])
    # the same number of steps on both ranks (DDP needs every rank in each gradient all-reduce)
    steps = math.ceil(len(images) / NODES / 8)
    assert [by_rank[r]["record"]["iterations"] for r in range(NODES)] == [steps] * NODES
    assert [by_rank[r]["record"]["epochs"] for r in range(NODES)] == [1] * NODES


def test_both_ranks_end_with_the_model_rank_0_saved(two_node_training):
    by_rank = two_node_training["by_rank"]
    hashes = {by_rank[r]["record"]["parameters_sha256"] for r in range(NODES)}
    assert len(hashes) == 1, "the ranks' parameters drifted apart: DDP did not synchronise the nodes"
    ckpt = by_rank[0]["node"] / "models"
    network = densenet169()
    state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    assert parameters_sha256(network.parameters()) in hashes  # the bundle's own best model: the last epoch's weights
    assert parameters_sha256(densenet169().parameters()) not in hashes  # and training moved them
    summary = read_json(ckpt / "training_summary.json")
    assert summary["epochs_completed"] == 1 and summary["iterations"] == by_rank[0]["record"]["iterations"]


def test_only_global_rank_0_writes_checkpoints_and_logs(two_node_training):
    by_rank = two_node_training["by_rank"]
    main, other = by_rank[0]["node"], by_rank[1]["node"]
    written = _files(main)
    assert {"models/model.pt", "models/checkpoint_epoch=1.pt", "models/model_settings.json",
            "models/training_summary.json", "out/rank0.json"} <= written
    assert any(f.startswith("out/events.out.tfevents.") for f in written), written
    # the other node's folders: its rank record, and not even an empty TensorBoard file
    assert _files(other) == {"out/rank1.json"}


@pytest.fixture(scope="module")
def probed(root, tmp_path_factory) -> dict:
    """Every other bundle's multi-GPU trainer built on two nodes: ``{bundle: [rank 0's, rank 1's]}`` records."""
    work = tmp_path_factory.mktemp("multinode_probe")
    args = ["tests.bundles.multinode_probe", str(root), str(work), *PROBED]
    run_nodes("bundles-probe", [args] * NODES, REPO, work)
    found = {}
    for bundle in PROBED:
        records = sorted((work / bundle).glob("node*/rank*.json"))
        found[bundle] = sorted((read_json(r) | {"folder": str(r.parent)} for r in records), key=lambda r: r["rank"])
        assert [r["rank"] for r in found[bundle]] == list(range(NODES)), records
    return found


@pytest.mark.parametrize("bundle", PROBED)
def test_multi_gpu_config_builds_on_two_nodes(probed, bundle):
    ranks = probed[bundle]
    assert all(r["world_size"] == NODES and r["env"]["LOCAL_RANK"] == "0" for r in ranks)
    assert {r["env"]["GROUP_RANK"] for r in ranks} == {"0", "1"}
    assert all(r["backend"] == "gloo" and r["device"] == "cpu" for r in ranks)
    _assert_disjoint_shards([r["train_shard"] for r in ranks], ranks[0]["train_datalist"])
    assert ranks[0]["train_datalist"] == ranks[1]["train_datalist"]
    if bundle == "resnet_svm":
        assert {r["network"] for r in ranks} == {"ResNetSVM"}  # no DDP: rank 0 fits the SVMs on gathered features
    else:
        assert {r["network"] for r in ranks} == {"DistributedDataParallel"}
        # weights seeded by rank, then equal: DDP's construction broadcast rank 0's to the other node
        assert ranks[0]["initial_sha256"] != ranks[1]["initial_sha256"]
        assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    for handlers in ("train_handlers", "val_handlers"):
        main, other = (set(r[handlers]) for r in ranks)
        assert other <= main and not other & RANK0_ONLY, (handlers, main, other)
    assert RANK0_ONLY & set(ranks[0]["val_handlers"]) or bundle == "resnet_svm"
    assert _files(Path(ranks[1]["folder"])) == {"rank1.json"}
