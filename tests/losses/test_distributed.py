"""DDP equivalence: 2 gloo processes holding half a batch each match one process on all of it.

Convention checked here (see medssl/losses/distributed.py): rank r's loss ``L_r`` is the
mean over its own samples against the gathered global batch, so

- ``mean_r L_r`` equals the single-process loss ``L`` on the global batch;
- the gradient rank r sees on its local embeddings is ``W * dL/dz_r`` (backward through
  ``gather_with_grad`` sums every rank's contribution; W = world size = 2);
- after DDP's averaging of parameter gradients (``all_reduce / W``), a shared encoder's
  gradient equals the single-process ``dL/dtheta`` exactly.

Sinkhorn codes on each rank equal the single-process codes of the same rows (sums over the
batch are all-reduced), and DINO's center equals the single-process center.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medssl.losses import (
    all_reduce_sum,
    gather_with_grad,
    info_nce_loss,
    rank,
    sinkhorn,
    swav_loss,
    updated_center,
    world_size,
)

pytestmark = pytest.mark.timeout(120)  # a rendezvous that never completes fails, not hangs

WORLD = 2
ATOL = 1e-5
INFONCE_CASES = {"two_view": (2, "pairs"), "mv3_pairs": (3, "pairs"), "mv3_joint": (3, "joint")}


def make_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {
        "z2": torch.randn(8, 2, 16, generator=g),
        "z3": torch.randn(8, 3, 16, generator=g),
        "x": torch.randn(8, 3, 12, generator=g),  # encoder inputs for the simulated DDP step
        "scores": [
            torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
            @ torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1).T
            for _ in range(3)
        ],
        "center": torch.randn(6, generator=g),
        "teacher": torch.randn(8, 6, generator=g),
    }


def infonce_loss_and_grad(z: torch.Tensor, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.clone().requires_grad_()
    loss = info_nce_loss(z, temperature=0.2, form=form)
    loss.backward()
    return loss.detach(), z.grad


def encoder_loss_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)  # one initialisation on every rank, as DDP broadcasts it
    encoder = torch.nn.Linear(12, 16)
    loss = info_nce_loss(encoder(x), temperature=0.2)
    loss.backward()
    return loss.detach(), encoder.weight.grad


def swav_loss_and_grad(scores: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    scores = [s.clone().requires_grad_() for s in scores]
    loss = swav_loss(scores, assign_crops=(0, 1), sinkhorn_iterations=3)
    loss.backward()
    return loss.detach(), [s.grad for s in scores]


def _worker(rank_: int, init_file: str, out_dir: str, data: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_, world_size=WORLD)
    try:
        n = data["z2"].shape[0] // WORLD
        local = slice(rank_ * n, (rank_ + 1) * n)
        out: dict = {"world_size": world_size(), "rank": rank()}
        out["gathered"] = gather_with_grad(data["z2"][local])
        out["summed"] = all_reduce_sum(torch.tensor([float(rank_ + 1)]))
        for name, (views, form) in INFONCE_CASES.items():
            z = data["z2"] if views == 2 else data["z3"]
            out[name] = infonce_loss_and_grad(z[local], form)
        loss, grad = encoder_loss_and_grad(data["x"][local])
        dist.all_reduce(grad)  # what DDP does to parameter gradients ...
        out["encoder"] = (loss, grad / WORLD)  # ... followed by dividing by the world size
        out["sinkhorn"] = sinkhorn(data["scores"][0][local], epsilon=0.05, iterations=3)
        out["swav"] = swav_loss_and_grad([s[local] for s in data["scores"]])
        out["center"] = updated_center(data["center"], data["teacher"][local], momentum=0.9)
        torch.save(out, os.path.join(out_dir, f"rank{rank_}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[dict, list[dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_data()
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp), data), nprocs=WORLD, join=True)
    return data, [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def halves(x: torch.Tensor) -> list[torch.Tensor]:
    return list(x.chunk(WORLD, dim=0))


def test_helpers_are_no_ops_on_one_process():
    x = torch.randn(3, 2)
    assert world_size() == 1 and rank() == 0
    assert gather_with_grad(x) is x and all_reduce_sum(x) is x


def test_ranks_see_the_group_and_gather_in_rank_order(ddp):
    data, ranks = ddp
    for r, out in enumerate(ranks):
        assert (out["world_size"], out["rank"]) == (WORLD, r)
        assert torch.equal(out["gathered"], data["z2"])
        assert out["summed"].item() == 3.0


@pytest.mark.parametrize("case", list(INFONCE_CASES))
def test_infonce_loss_and_embedding_gradients_match_one_process(ddp, case):
    data, ranks = ddp
    views, form = INFONCE_CASES[case]
    full_loss, full_grad = infonce_loss_and_grad(data["z2"] if views == 2 else data["z3"], form)
    assert torch.allclose(torch.stack([out[case][0] for out in ranks]).mean(), full_loss, atol=ATOL)
    for out, expected in zip(ranks, halves(full_grad)):
        assert torch.allclose(out[case][1] / WORLD, expected, atol=ATOL)


def test_infonce_encoder_gradient_after_ddp_averaging_matches_one_process(ddp):
    data, ranks = ddp
    full_loss, full_grad = encoder_loss_and_grad(data["x"])
    assert torch.allclose(
        torch.stack([out["encoder"][0] for out in ranks]).mean(), full_loss, atol=ATOL
    )
    for out in ranks:
        assert torch.allclose(out["encoder"][1], full_grad, atol=ATOL)


def test_sinkhorn_codes_are_balanced_over_the_global_batch(ddp):
    data, ranks = ddp
    full = sinkhorn(data["scores"][0], epsilon=0.05, iterations=3)
    assert torch.allclose(torch.cat([out["sinkhorn"] for out in ranks]), full, atol=ATOL)


def test_swav_loss_and_score_gradients_match_one_process(ddp):
    data, ranks = ddp
    full_loss, full_grads = swav_loss_and_grad(data["scores"])
    assert torch.allclose(
        torch.stack([out["swav"][0] for out in ranks]).mean(), full_loss, atol=ATOL
    )
    for crop, full_grad in enumerate(full_grads):
        for out, expected in zip(ranks, halves(full_grad)):
            assert torch.allclose(out["swav"][1][crop] / WORLD, expected, atol=ATOL)


def test_dino_center_is_the_global_batch_mean_on_every_rank(ddp):
    data, ranks = ddp
    full = updated_center(data["center"], data["teacher"], momentum=0.9)
    for out in ranks:
        assert torch.allclose(out["center"], full, atol=ATOL)
