"""DDP helpers under two real Gloo processes: rank shards and the gathered study AUC.

One pair of processes (``torch.multiprocessing.spawn``) runs every distributed scenario once and
writes what each rank saw to a JSON file; the tests read those files.
"""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine
from sklearn.metrics import roc_auc_score

from mura_monai.engines.checkpoints import attach_resume
from mura_monai.engines.distributed import distributed_device, init_distributed, is_main_process, rank_shard
from mura_monai.engines.prediction_buffer import StudyAUC

WORLD = 2

# (study, label, probability): image 0 lands on both ranks (7 images padded to 8). Its study A is
# abnormal; counted twice, A's mean rises from 0.5 to 0.633 and the AUC from 7/9 to 1, so the
# gathered AUC is right only if the duplicate is dropped.
IMAGES = [("A", 1, 0.9), ("A", 1, 0.1), ("B", 0, 0.55), ("C", 1, 0.8), ("D", 0, 0.3), ("E", 0, 0.6), ("F", 1, 0.7)]
RIGHT_AUC = 7 / 9


def _records(images=IMAGES) -> list[dict]:
    return [{"study": f"/valid/XR_HAND/p/{s}", "label": y, "probability": p, "body_part": "XR_HAND",
             "path": f"/valid/XR_HAND/p/{s}/image{i}.png"} for i, (s, y, p) in enumerate(images)]


def _batches(records: list[dict], size: int = 2) -> list[dict]:
    """Collated batches as a ``decollate=False`` evaluator holds them in ``state.batch``."""
    out = []
    for start in range(0, len(records), size):
        chunk = records[start:start + size]
        out.append({
            "study": [r["study"] for r in chunk], "path": [r["path"] for r in chunk],
            "body_part": [r["body_part"] for r in chunk], "label": torch.tensor([[float(r["label"])] for r in chunk]),
            "logit": torch.tensor([[math.log(r["probability"] / (1 - r["probability"]))] for r in chunk]),
        })
    return out


def _study_auc(records: list[dict]) -> float:
    """StudyAUC of ``records`` fed through a tiny evaluator engine (output ``{"pred": logits}``)."""
    evaluator = Engine(lambda engine, batch: {"pred": batch["logit"], "label": batch["label"]})
    StudyAUC().attach(evaluator, "auc")
    evaluator.run(_batches(records), max_epochs=1)
    return evaluator.state.metrics["auc"]


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank, joining the group as under torchrun (RANK / WORLD_SIZE / MASTER_* in the environment)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    result: dict = {"rank_returned": init_distributed(), "rank_again": init_distributed(),
                    "backend": dist.get_backend(), "main": is_main_process()}
    result["shards"] = {str(n): rank_shard(list(range(n))) for n in (1, 2, 5, 6, 7)}
    result["shuffled"] = {str(n): rank_shard(list(range(n)), shuffle=True, seed=3) for n in (5, 6)}
    result["empty"] = rank_shard([])
    records = _records()
    shard = rank_shard(records)
    result["shard_paths"] = [r["path"] for r in shard]
    result["auc"] = _study_auc(shard)
    result["auc_shuffled"] = _study_auc(rank_shard(records, shuffle=True, seed=1))
    # both ranks hold every image of the list: all duplicates
    result["auc_all_on_both"] = _study_auc(records)
    # --resume on nodes that do not share --ckpt_dir: rank 0's folder has a checkpoint, rank 1's none
    own = Path(out_dir, f"ckpt{rank}")
    own.mkdir()
    if rank == 0:
        (own / "checkpoint_epoch=1.pt").write_bytes(b"")
    try:
        attach_resume(None, own, True, {})
        result["resume_split"] = None
    except RuntimeError as err:
        result["resume_split"] = str(err)
    shared = Path(out_dir, "shared_empty")
    shared.mkdir(exist_ok=True)
    result["resume_agreed"] = attach_resume(None, shared, True, {})  # the same (no) checkpoint on both: no error
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_without_process_group_the_list_is_unchanged():
    assert not dist.is_initialized()
    data = [{"i": i} for i in range(5)]
    assert rank_shard(data) == data and rank_shard(data) is not data
    assert rank_shard(data, shuffle=True, seed=0) == data
    assert rank_shard([]) == []
    assert is_main_process()


def test_init_distributed_joins_the_torchrun_group(ranks):
    for rank, result in enumerate(ranks):
        assert result["rank_returned"] == result["rank_again"] == rank
        assert result["backend"] == "gloo"
    assert [r["main"] for r in ranks] == [True, False]


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7])
def test_shards_cover_every_item_with_equal_lengths(ranks, n):
    shards = [r["shards"][str(n)] for r in ranks]
    assert len(shards[0]) == len(shards[1]) == math.ceil(n / WORLD)
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(n))
    assert len(shards[0]) + len(shards[1]) - n == (-n) % WORLD  # only the padding repeats


def test_one_item_list_gives_both_ranks_the_item(ranks):
    assert [r["shards"]["1"] for r in ranks] == [[0], [0]]


def test_shuffled_shards_use_one_permutation_on_all_ranks(ranks):
    for n in ("5", "6"):
        a, b = (r["shuffled"][n] for r in ranks)
        assert len(a) == len(b)
        assert sorted(set(a) | set(b)) == list(range(int(n)))
    a, b = (r["shuffled"]["6"] for r in ranks)
    assert set(a).isdisjoint(b)  # even length: a true partition


def test_empty_list_stays_empty(ranks):
    assert [r["empty"] for r in ranks] == [[], []]


def test_single_process_reference_auc():
    records = _records()
    assert _study_auc(records) == pytest.approx(RIGHT_AUC)
    # the reference by hand: study probability = mean of its images
    studies: dict[str, tuple[int, list[float]]] = {}
    for r in records:
        studies.setdefault(r["study"], (r["label"], []))[1].append(r["probability"])
    assert roc_auc_score([v[0] for v in studies.values()],
                         [sum(v[1]) / len(v[1]) for v in studies.values()]) == pytest.approx(RIGHT_AUC)
    # and what counting image 0 twice would give: the duplicate matters
    assert _study_auc(records + [records[0] | {"path": records[0]["path"] + "#copy"}]) == pytest.approx(1.0)


def test_gathered_auc_equals_single_process_auc_on_every_rank(ranks):
    paths = [r["shard_paths"] for r in ranks]
    assert set(paths[0]) & set(paths[1]) == {_records()[0]["path"]}  # image 0 on both ranks
    assert [r["auc"] for r in ranks] == pytest.approx([RIGHT_AUC, RIGHT_AUC])
    assert [r["auc_shuffled"] for r in ranks] == pytest.approx([RIGHT_AUC, RIGHT_AUC])


def test_every_image_on_both_ranks_counts_once(ranks):
    assert [r["auc_all_on_both"] for r in ranks] == pytest.approx([RIGHT_AUC, RIGHT_AUC])



def test_resume_stops_every_rank_when_the_nodes_found_different_checkpoints(ranks):
    for result in ranks:
        assert "rank 0: checkpoint_epoch=1.pt, rank 1: none" in result["resume_split"]
        assert "--ckpt_dir must be a directory every node shares" in result["resume_split"]
        assert result["resume_agreed"] is None


def test_the_gpu_is_the_node_local_rank_not_the_global_rank(monkeypatch):
    """Node 2 of 2 nodes with 2 GPUs each: global rank 3 is local rank 1 there, so cuda:1 (not cuda:3)."""
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_device() == torch.device("cuda:1") and selected == [torch.device("cuda:1")]
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="--nproc_per_node must not exceed the GPUs of each node"):
        distributed_device()


def test_init_distributed_outside_torchrun_says_how_to_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed()
    assert not dist.is_initialized()
