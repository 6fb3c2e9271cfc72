"""CION's views as the method builds them: the released blur, scaled to the input size."""

from __future__ import annotations

import pytest

from reidscale.methods.cion import released_blur_sigma


def test_the_blur_is_the_released_one_at_256x128_and_scales_with_the_height() -> None:
    assert released_blur_sigma((256, 128)) == pytest.approx((0.1, 2.0))
    assert released_blur_sigma((64, 32)) == pytest.approx((0.025, 0.5))  # the same fraction of the person
    assert released_blur_sigma((384, 192)) == pytest.approx((0.15, 3.0))
