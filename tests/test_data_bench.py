"""Small known-answer checks of the load and codec benchmarks (the real runs are `gsv bench`)."""
import numpy as np
from gaussianvision.apps.bench.codec import _psnr, at_budget


def test_at_budget_respects_the_byte_budget():
    rng = np.random.default_rng(0)
    arr = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    for fmt in ("JPEG", "WEBP"):
        big = at_budget(arr, fmt, 10**6)
        assert big[2] == 100  # everything fits: best quality
        mid = at_budget(arr, fmt, big[0] // 2)
        assert mid[0] <= big[0] // 2 and mid[2] < 100 and mid[1] < big[1]
        assert at_budget(arr, fmt, 50) is None  # smaller than any file
    assert _psnr(np.zeros(4), np.full(4, 0.1)) == np.float64(20.0)
