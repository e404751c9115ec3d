"""anygen.errors.check_range: the one range check every argument goes through."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anygen.errors import InvalidArgumentError, check_range


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("low, high", [(None, None), (0.0, None), (None, 1.0)])
def test_non_finite_values_fail_even_without_bounds(value: float, low: float | None, high: float | None) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^scale=(inf|-inf|nan) is outside the valid range"):
        check_range("scale", value, low, high)


@pytest.mark.parametrize("value", [True, "2.0", None, b"1", [1.0], torch.ones(2)])
def test_non_numbers_fail(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="scale=.* must be a finite number in"):
        check_range("scale", value, 0.0, None)


@pytest.mark.parametrize("value", [0.0, 1, 3.5e38, np.float32(2.0), np.int64(7), torch.tensor(0.5)])
def test_finite_numbers_inside_the_range_pass(value: object) -> None:
    check_range("scale", value, 0.0, None)


def test_the_message_names_the_argument_the_value_and_the_range() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^top_p=0.0 is outside the valid range \(0.0, 1.0\]"):
        check_range("top_p", 0.0, 0.0, 1.0, low_inclusive=False)
    with pytest.raises(InvalidArgumentError, match=r"valid range \[0.0, inf\)"):
        check_range("guidance_scale", -1.0, 0.0, None)
    with pytest.raises(InvalidArgumentError, match=r"valid range \(-inf, 1.0\)"):
        check_range("x", 1.0, None, 1.0, high_inclusive=False)
