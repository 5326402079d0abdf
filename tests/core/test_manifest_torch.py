"""`to_float_metrics` with torch and numpy scalars, as frameworks hand them over (Lightning's
`callback_metrics` hold 0-d tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckpt_core.manifest import to_float_metrics


def test_zero_d_tensors_and_numpy_scalars_become_floats():
    weight = torch.tensor(0.25, requires_grad=True)
    metrics = {
        "loss": torch.tensor(0.5),
        "grad_tracked": weight * 2,
        "count": torch.tensor(3),
        "half": torch.tensor(1.5, dtype=torch.bfloat16),
        "one_element": torch.tensor([2.5]),
        "np_scalar": np.float32(0.75),
        "np_zero_d": np.array(4.0),
        "nan": torch.tensor(float("nan")),
    }
    floats = to_float_metrics(metrics)
    assert all(type(v) is float for v in floats.values())
    assert {k: v for k, v in floats.items() if k != "nan"} == {
        "loss": 0.5,
        "grad_tracked": 0.5,
        "count": 3.0,
        "half": 1.5,
        "one_element": 2.5,
        "np_scalar": 0.75,
        "np_zero_d": 4.0,
    }
    assert np.isnan(floats["nan"])


NOT_NUMBERS = {
    "vector": torch.tensor([1.0, 2.0]),
    "flag": torch.tensor(True),
    "np_flag": np.bool_(True),
    "complex": torch.tensor(1j),
    "text": "0.5",
}


@pytest.mark.parametrize("name", sorted(NOT_NUMBERS))
def test_a_value_that_is_no_number_is_refused_naming_it(name):
    with pytest.raises(TypeError, match=f"metric '{name}' must be a scalar number"):
        to_float_metrics({"loss": torch.tensor(0.5), name: NOT_NUMBERS[name]})


def test_drop_non_numbers_keeps_the_numbers_only():
    logged = {"loss": torch.tensor(0.5), "acc": np.float64(0.9), **NOT_NUMBERS}
    assert to_float_metrics(logged, drop_non_numbers=True) == {"loss": 0.5, "acc": 0.9}
