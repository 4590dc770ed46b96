"""The non-finite guard: a NaN/Inf loss term or gradient stops the run, naming the step and the culprit."""

from __future__ import annotations

import pytest
import torch

from medssl.errors import MedsslError
from medssl.training import NonFiniteLossError
from medssl.training.guard import check_gradients, check_loss_terms


def test_finite_terms_and_gradients_pass():
    check_loss_terms({"a": torch.tensor(1.0), "total": torch.tensor([2.0])}, step=0)
    check_gradients([("w", torch.ones(3, 3)), ("b", torch.zeros(3))], step=0)
    check_gradients([], step=0)  # nothing trainable this step


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_term_names_the_step_and_every_term(bad):
    terms = {
        "position": torch.tensor(0.5),
        "regularization": torch.tensor(bad),
        "total": torch.tensor(bad),
    }
    with pytest.raises(
        NonFiniteLossError,
        match=r"step 7: loss is not finite \(position=0.5, regularization=-?(nan|inf), total=-?(nan|inf)\)",
    ) as error:
        check_loss_terms(terms, step=7)
    assert isinstance(error.value, MedsslError)
    assert "every checkpoint of this run holds finite weights" in str(error.value)


def test_terms_with_gradients_and_low_precision_are_checked_detached():
    term = torch.tensor(float("nan"), dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        check_loss_terms({"total": term}, step=0)


def test_a_non_finite_gradient_names_the_step_and_at_most_three_parameters():
    nan = torch.full((2,), float("nan"))
    grads = [("ok", torch.ones(2))] + [(f"layer{i}.weight", nan) for i in range(5)]
    with pytest.raises(NonFiniteLossError, match="step 12: non-finite gradient") as error:
        check_gradients(grads, step=12)
    message = str(error.value)
    assert "layer0.weight, layer1.weight, layer2.weight" in message
    assert "layer3" not in message and "ok" not in message
    with pytest.raises(NonFiniteLossError, match=r"e\.g\. big"):
        check_gradients([("big", torch.tensor([float("inf"), 1.0]))], step=1)
