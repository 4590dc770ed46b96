"""SwAV's feature queue (medssl.losses.feature_queue): sharp, balanced codes for tiny batches.

With 2 samples against K prototypes, Sinkhorn on the batch alone caps every code entry at
about 2/K (each prototype receives 2/K of the mass); over [queue; batch] a sample's code can
sit on its own prototype while every prototype still gets an equal share.
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from medssl.losses import prototype_scores, sinkhorn, swapped_prediction, swav_loss
from medssl.losses.feature_queue import FeatureQueue


def prototypes(k: int, dim: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(k, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def near(protos: torch.Tensor, index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Unit embeddings close to the prototypes ``index`` (cosine ~0.9)."""
    noise = torch.randn(len(index), protos.shape[1], generator=g) / math.sqrt(protos.shape[1])
    return F.normalize(protos[index] + 0.5 * noise, dim=1)


def filled_queue(protos: torch.Tensor, length: int, batch: int = 64, seed: int = 1) -> FeatureQueue:
    """A queue of ``length`` embeddings near random prototypes, pushed ``batch`` at a time."""
    g = torch.Generator().manual_seed(seed)
    queue = FeatureQueue(1, length, protos.shape[1], protos.shape[0])
    for step in range(length // batch):
        queue.push(
            [near(protos, torch.randint(0, protos.shape[0], (batch,), generator=g), g)], step
        )
    return queue


def entropy(codes: torch.Tensor) -> float:
    """Mean row entropy in nats."""
    return float(-(codes * codes.clamp_min(1e-30).log()).sum(1).mean())


def test_two_samples_against_3000_prototypes_get_diffuse_codes_alone_and_sharp_ones_with_a_queue():
    protos = prototypes(3000, 128)
    queue = filled_queue(protos, 3840)
    batch = near(protos, torch.tensor([0, 1]), torch.Generator().manual_seed(2))
    scores = prototype_scores(batch, protos)

    alone = sinkhorn(scores)
    queued = sinkhorn(torch.cat([queue.scores(protos, batch=2)[0], scores]))[-2:]

    assert alone.max() < 1.01 * 2 / 3000  # every entry capped at B/K: a near-uniform target
    assert entropy(alone) > 0.95 * math.log(3000)
    assert queued.argmax(1).tolist() == [0, 1]  # each sample on its own prototype ...
    assert queued.max(1).values.min() > 0.5  # ... with most of its mass
    assert entropy(queued) < 0.3 * math.log(3000)


def test_codes_over_queue_and_batch_give_every_prototype_an_equal_share():
    protos = prototypes(64, 32)
    queue = filled_queue(protos, 256, batch=2)
    batch = near(protos, torch.tensor([3, 3]), torch.Generator().manual_seed(2))
    codes = sinkhorn(
        torch.cat([queue.scores(protos, batch=2)[0], prototype_scores(batch, protos)]),
        iterations=100,  # the balance Sinkhorn converges to; training's 3 iterations approach it
    )
    share = codes.sum(0) / codes.shape[0]
    assert torch.allclose(share, torch.full((64,), 1 / 64), atol=0.02 / 64)
    assert torch.allclose(codes.sum(1), torch.ones(codes.shape[0]), atol=1e-5)


def test_swav_loss_with_queue_scores_uses_the_batch_rows_of_codes_over_queue_and_batch():
    protos = prototypes(16, 8)
    g = torch.Generator().manual_seed(3)
    s0, s1, s2 = (prototype_scores(torch.randn(4, 8, generator=g), protos) for _ in range(3))
    q0, q1 = (prototype_scores(torch.randn(20, 8, generator=g), protos) for _ in range(2))
    c0, c1 = sinkhorn(torch.cat([q0, s0]))[-4:], sinkhorn(torch.cat([q1, s1]))[-4:]
    by_hand = torch.stack(
        [swapped_prediction(s, c, 0.1) for c, s in [(c0, s1), (c0, s2), (c1, s0), (c1, s2)]]
    ).mean()
    torch.testing.assert_close(swav_loss([s0, s1, s2], queue_scores=[q0, q1]), by_hand)
    assert not torch.allclose(swav_loss([s0, s1, s2]), by_hand)
    with pytest.raises(ValueError, match="queue_scores"):
        swav_loss([s0, s1], queue_scores=[q0])
    with pytest.raises(ValueError, match="queue_scores"):
        swav_loss([s0, s1], queue_scores=[q0, q1[:, :3]])


def test_push_stores_nothing_before_the_start_step_then_the_newest_rows_first():
    queue = FeatureQueue(2, length=5, dim=3, num_prototypes=10, start_step=2)
    batches = [F.normalize(torch.randn(2, 2, 3), dim=-1) for _ in range(5)]  # [crop, B, D]
    for step, rows in enumerate(batches[:2]):
        queue.push(list(rows), step)
        assert int(queue.filled) == 0 and queue.scores(prototypes(10, 3), batch=2) is None
    queue.push(list(batches[2]), 2)
    assert int(queue.filled) == 2
    assert [s.shape for s in queue.scores(prototypes(10, 3), batch=2)] == [(2, 10)] * 2
    for step in (3, 4):
        queue.push(list(batches[step]), step)
    assert int(queue.filled) == 5  # 6 rows pushed, the oldest one dropped
    expected = torch.cat([batches[4], batches[3], batches[2][:, :1]], dim=1)
    torch.testing.assert_close(queue.embeddings, expected)


def test_a_checkpoint_round_trip_gives_back_the_same_queue():
    protos = prototypes(32, 8)
    queue = filled_queue(protos, 20, batch=2)
    restored = FeatureQueue(1, 20, 8, 32)
    restored.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"embeddings", "filled"}
    assert int(restored.filled) == 20
    torch.testing.assert_close(restored.scores(protos, 2)[0], queue.scores(protos, 2)[0])


def test_the_queue_is_off_when_the_global_batch_reaches_the_prototypes(caplog):
    protos = prototypes(8, 4)
    queue = FeatureQueue(1, length=16, dim=4, num_prototypes=8)
    with caplog.at_level(logging.INFO, logger="medssl.losses.feature_queue"):
        queue.push([torch.randn(8, 4)], step=0)
    assert int(queue.filled) == 0 and queue.scores(protos, batch=8) is None
    assert "feature queue off: global batch 8, 8 prototypes" in caplog.text
    queue.push([torch.randn(7, 4)], step=0)
    assert int(queue.filled) == 7
    no_queue = FeatureQueue(1, length=0, dim=4, num_prototypes=8)
    no_queue.push([torch.randn(2, 4)], step=0)
    assert no_queue.scores(protos, batch=2) is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: FeatureQueue(0, 4, 4, 8),
        lambda: FeatureQueue(1, -1, 4, 8),
        lambda: FeatureQueue(1, 4, 4, 8).push([torch.randn(2, 4)] * 2, 0),
        lambda: FeatureQueue(1, 4, 4, 8).push([torch.randn(2, 3)], 0),
        lambda: FeatureQueue(1, 4, 4, 8).scores(torch.randn(7, 4), 2),
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


# 2 gloo ranks holding half of every batch equal one process holding all of it ------------
WORLD, B, K, D, L = 2, 4, 12, 8, 10


def ddp_data() -> dict:
    g = torch.Generator().manual_seed(5)
    return {
        "pushed": [torch.randn(2, B, D, generator=g) for _ in range(4)],  # [crop, B, D] per step
        "crops": [torch.randn(B, D, generator=g) for _ in range(3)],
        "prototypes": prototypes(K, D, seed=6),
    }


def queue_codes_and_loss(data: dict, local: slice) -> dict:
    queue = FeatureQueue(2, L, D, K)
    for step, rows in enumerate(data["pushed"]):
        queue.push([r[local] for r in rows], step)
    scores = [prototype_scores(c[local], data["prototypes"]) for c in data["crops"]]
    queue_scores = queue.scores(data["prototypes"], batch=scores[0].shape[0])
    return {
        "queue": queue.embeddings.clone(),
        "codes": sinkhorn(torch.cat([queue_scores[0], scores[0]]))[-scores[0].shape[0] :],
        "loss": swav_loss(scores, queue_scores=queue_scores),
    }


def _worker(rank_: int, init_file: str, out_dir: str, data: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_, world_size=WORLD)
    try:
        n = B // WORLD
        out = queue_codes_and_loss(data, slice(rank_ * n, (rank_ + 1) * n))
        torch.save(out, os.path.join(out_dir, f"rank{rank_}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)  # a rendezvous that never completes fails, not hangs
def test_two_ranks_hold_the_global_queue_and_get_the_single_process_codes(tmp_path):
    data = ddp_data()
    mp.start_processes(
        _worker,
        args=(str(tmp_path / "init"), str(tmp_path), data),
        nprocs=WORLD,
        join=True,
        start_method="fork",  # ~1 s; spawn would re-import torch in each rank
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = queue_codes_and_loss(data, slice(None))
    for out in ranks:  # every rank: the last L rows of the global batches, newest first
        torch.testing.assert_close(out["queue"], single["queue"])
    torch.testing.assert_close(torch.cat([out["codes"] for out in ranks]), single["codes"])
    torch.testing.assert_close(
        torch.stack([out["loss"] for out in ranks]).mean(), single["loss"], atol=1e-5, rtol=0
    )
