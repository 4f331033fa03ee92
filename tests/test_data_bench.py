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


def test_jpeg_baseline_is_stored_as_img2dataset_stores_it(tmp_path):
    """Shorter side 256 (or 224), quality 95 (libjpeg's luminance table at q95 starts with 2, at q90 with 3)."""
    import io
    from PIL import Image
    from gaussianvision.apps.bench.load import make_jpeg_shards
    from gaussianvision.data.shards import read_samples
    for side, quality, first in ((256, 95, 2), (224, 95, 2), (None, 90, 3)):
        urls = make_jpeg_shards(tmp_path / f"j{side}", 8, 8, side, quality)
        for x in read_samples(urls[0]):
            im = Image.open(io.BytesIO(x["jpg"]))
            assert im.format == "JPEG" and im.quantization[0][0] == first
            assert min(im.size) == side if side else min(im.size) >= 300


def test_load_bench_compares_against_the_img2dataset_jpegs(tmp_path):
    from gaussianvision.apps.bench.load import markdown, run_load_bench
    res = run_load_bench(tmp_path, n_samples=16, per_shard=8, batch_size=8, workers=(0,), n_gaussians=(16,),
                         repeats=1, jpeg_sides=(256, 224), log=lambda m: None)
    data = [r["data"] for r in res["rows"]]
    assert data[:2] == ["JPEG img2dataset 256 px q95", "JPEG img2dataset 224 px q95"]
    assert res["baseline"] == data[0] and res["rows"][0]["speedup_vs_jpeg"] == 1.0
    assert all(r["samples"] == 16 and r["samples_per_s"] > 0 for r in res["rows"])
    assert "x baseline" in markdown(res) and "quality 95" in res["jpeg_source_sizes"]
