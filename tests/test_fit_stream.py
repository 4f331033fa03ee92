"""fit/stream.py: FitStream batches a stream of images by size, fits each batch with fit_images
(exactly the same result as fit_images on that batch), encodes, keeps order, and reports a
failure per item without losing the other images of its batch."""
import numpy as np
import pytest
import torch

import gaussianvision.fit.stream as stream_mod
from gaussianvision.fit import Encoding, FitConfig, FitStream, fit_images
from gaussianvision.splats import encode

CFG = FitConfig(iters=3, init="content", backend="reference")


def images(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in shapes]


def same_splats(a, b) -> bool:
    return (a.height, a.width) == (b.height, b.width) and all(
        torch.equal(getattr(a, k), getattr(b, k)) for k in ("means", "chol", "colors"))


def test_results_equal_fit_images_on_the_same_batches_in_input_order():
    # sizes A B A A B C with batch_size 2: batches [0, 2] (full), then the open ones in the
    # order their sizes opened: [1, 4], [3], [5]
    shapes = [(12, 16), (14, 14), (12, 16), (12, 16), (14, 14), (11, 13)]
    ims = images(shapes)
    seen = []
    items = list(FitStream(6, CFG, batch_size=2)(enumerate(ims), on_batch=lambda b: seen.append([i.key for i in b])))
    assert seen == [[0, 2], [1, 4], [3], [5]]
    assert [it.key for it in items] == list(range(6))
    for batch in seen:
        ref = fit_images(torch.stack([ims[k] for k in batch]), 6, config=CFG)
        for j, k in enumerate(batch):
            it = items[k]
            assert it.ok and it.batch_size == len(batch) and it.data is None
            assert same_splats(it.splats, ref.splats[j])
            assert {m: v for m, v in it.metrics.items() if "seconds" not in m} == \
                   {m: v for m, v in ref.metrics[j].items() if "seconds" not in m}


def test_unordered_yields_each_batch_as_it_is_done():
    ims = images([(12, 12), (13, 13), (12, 12)])
    keys = [it.key for it in FitStream(4, CFG, batch_size=2, ordered=False)(enumerate(ims))]
    assert keys == [0, 2, 1]


@pytest.mark.parametrize("encoding", [Encoding(), Encoding(dtype="float32"), Encoding(layout="quantized", zstd=True)])
def test_encoded_bytes_are_the_format_of_the_fitted_splats(encoding):
    ims = images([(12, 12)] * 3)
    items = list(FitStream(5, CFG, batch_size=3, encoding=encoding)(enumerate(ims)))
    ref = fit_images(torch.stack(ims), 5, config=CFG)
    opts = {"zstd": True} if encoding.layout == "quantized" else {"dtype": encoding.dtype}
    assert [it.data for it in items] == [encode(ref.splats[b], layout=encoding.layout, **opts) for b in range(3)]


@pytest.mark.parametrize("layout", ["interleaved", "quantized"])
def test_a_progressive_encodings_prefix_is_the_file_of_its_first_gaussians(layout):
    """Encoding(..., progressive)(splats, first=k): each image's first k Gaussians in the progressive order, encoded
    from the fitted values (gsv send --prefix). Float16: the same bytes as decoding the whole file's first k and
    encoding them; quantized: within the format's quantization of the values themselves (a decoded quantized file
    quantized again, on the prefix's own ranges, was the review finding)."""
    from gaussianvision.fit.progressive import prefix_splats, progressive
    from gaussianvision.splats import decode
    s = fit_images(torch.stack(images([(16, 16)])), 12, config=CFG).splats
    enc = Encoding(layout=layout, progressive=True, order="eliminate")
    whole, first = enc(s), enc(s, first=5)
    got = decode(first)
    assert got.max_gaussians == 5 and decode(whole, max_gaussians=5).max_gaussians == 5
    want = prefix_splats(progressive(s, method="eliminate"), 5)
    if layout == "interleaved":
        assert first == encode(decode(whole, max_gaussians=5), progressive=True)
    direct = encode(want, layout=layout, progressive=True)
    assert first == direct  # one quantization, of the fitted values
    with pytest.raises(ValueError, match="first= needs a progressive encoding"):
        Encoding()(s, first=5)


def _failing_on_white(monkeypatch, calls):
    real = stream_mod.fit_images

    def fit(batch, n, **kw):
        calls.append(len(batch))
        if (batch.flatten(1).min(1).values == 1.0).any():
            raise RuntimeError("diverged")
        return real(batch, n, **kw)
    monkeypatch.setattr(stream_mod, "fit_images", fit)


def test_a_failing_image_costs_only_itself(monkeypatch):
    calls = []
    _failing_on_white(monkeypatch, calls)
    ims = images([(12, 12)] * 3)
    ims[1] = torch.ones(3, 12, 12)
    items = list(FitStream(5, CFG, batch_size=3)(enumerate(ims)))
    assert calls == [3, 1, 1, 1]  # the batch, then image by image
    assert [it.ok for it in items] == [True, False, True]
    assert items[1].error == "fit failed: RuntimeError: diverged" and isinstance(items[1].exception, RuntimeError)
    for k in (0, 2):  # each refitted alone: fit_images on a batch of one
        assert same_splats(items[k].splats, fit_images(ims[k][None], 5, config=CFG).splats[0])
        assert items[k].batch_size == 1


def test_without_retry_the_batch_fails_together_and_the_stream_goes_on(monkeypatch):
    calls = []
    _failing_on_white(monkeypatch, calls)
    ims = images([(12, 12)] * 3)
    ims[0] = torch.ones(3, 12, 12)
    items = list(FitStream(5, CFG, batch_size=2, retry=False)(enumerate(ims)))
    assert calls == [2, 1] and [it.ok for it in items] == [False, False, True]


def test_an_unencodable_result_fails_alone(monkeypatch):
    real = stream_mod.encode
    n = []

    def enc(s, **kw):
        n.append(1)
        if len(n) == 2:
            raise ValueError("a value exceeds the float16 range")
        return real(s, **kw)
    monkeypatch.setattr(stream_mod, "encode", enc)
    items = list(FitStream(5, CFG, batch_size=3, encoding=Encoding())(enumerate(images([(12, 12)] * 3))))
    assert [it.ok for it in items] == [True, False, True]
    assert items[1].error == "fit result not storable: a value exceeds the float16 range"


def test_uint8_batches_are_read_as_pixels_over_255():
    u8 = np.random.default_rng(0).integers(0, 256, (2, 3, 12, 12), dtype=np.uint8)
    a = FitStream(5, CFG).fit_batch(["a", "b"], u8)
    b = FitStream(5, CFG).fit_batch(["a", "b"], torch.from_numpy(u8).float() / 255.0)
    assert all(same_splats(x.splats, y.splats) for x, y in zip(a, b))


def test_map_batches_keeps_order_and_passes_markers_through():
    ims = images([(12, 12)] * 3)
    batches = [("b0", torch.stack(ims[:2])), ("end", None), ("b1", torch.stack(ims[2:]))]
    out = list(FitStream(5, CFG).map_batches(batches, max_inflight=1))
    assert [t for t, _ in out] == ["b0", "end", "b1"] and out[1][1] is None
    assert [it.key for it in out[0][1]] == [0, 1] and [it.key for it in out[2][1]] == [0]
    assert same_splats(out[2][1][0].splats, fit_images(ims[2][None], 5, config=CFG).splats[0])


def test_fits_under_no_grad_and_refuses_an_empty_batch_size():
    with torch.no_grad():
        (item,) = FitStream(4, CFG)([("k", images([(12, 12)])[0])])
    assert item.ok
    with pytest.raises(ValueError, match="batch_size"):
        list(FitStream(4, CFG, batch_size=0)([]))


def test_the_default_batch_fills_a_gpu_and_stays_16_on_a_cpu():
    """A GPU iteration costs ~4 ms of launches whatever the batch, so the CLI's default batch on a
    GPU is 512 images of 224 px (fewer for larger images); 16 on a CPU or for varying sizes."""
    from gaussianvision.apps.cli import convert
    from gaussianvision.fit.stream import GPU_BATCH_PIXELS, default_batch_size
    assert [default_batch_size(d, s) for d, s in (("cpu", 224), ("cuda", 224), ("cuda:1", 448), ("cuda", 112),
                                                  ("cuda", 4096), ("cuda", None), ("cuda", 0), ("cuda", 16))] == \
        [16, 512, 128, GPU_BATCH_PIXELS // 112 ** 2, 16, 16, 16, 4096]  # at most the largest batch measured
    # a CPU batch holds at most 16 images of 512 px (regression: 16 images of 2048 px, about 19 GB)
    assert [default_batch_size("cpu", s) for s in (512, 1024, 2048, 8000, None)] == [16, 4, 1, 1, 16]
    args = ["--input", "x", "--output", "y", "--gaussians", "8"]
    assert convert._config(convert._parser().parse_args(args + ["--device", "cuda"])).batch_size == 512
    assert convert._config(convert._parser().parse_args(args)).batch_size == 16
    assert convert._config(convert._parser().parse_args(args + ["--device", "cuda", "--batch-size", "7"])).batch_size == 7


def test_a_resumed_conversion_keeps_the_batch_it_started_with(tmp_path):
    """A folder started with the CPU's default batch (16) and resumed on a GPU without --batch-size keeps
    16: the batch is part of the resume fingerprint, so the GPU default would refuse to resume."""
    import json
    from gaussianvision.apps.cli import convert
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text(json.dumps({"batch_size": 16, "size": 224}))
    args = ["--input", "x", "--output", str(tmp_path / "out"), "--gaussians", "8", "--device", "cuda"]
    assert convert._config(convert._parser().parse_args(args)).batch_size == 16
    assert convert._config(convert._parser().parse_args(args + ["--batch-size", "64"])).batch_size == 64
    (tmp_path / "out" / "config.json").write_text("{not json")
    assert convert._config(convert._parser().parse_args(args)).batch_size == 512


def test_batch_pixels_caps_each_sizes_batch():
    """FitStream(batch_pixels=P): a batch of one size holds at most P pixels (at least one image), so
    `gsv fit --size 0` on large photos does not stack 16 of them; small sizes keep batch_size."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 24, 24, generator=g) for _ in range(3)] + [torch.rand(3, 12, 12, generator=g) for _ in range(3)]
    stream = FitStream(4, FitConfig(iters=1, backend="reference"), batch_size=4, batch_pixels=2 * 24 * 24)
    items = list(stream(enumerate(images)))
    assert [it.key for it in items] == list(range(6)) and all(it.ok for it in items)
    assert [it.batch_size for it in items] == [2, 2, 1, 3, 3, 3]
    whole = list(FitStream(4, FitConfig(iters=1, backend="reference"), batch_size=4)(enumerate(images)))
    for a, b in zip(items, whole):  # the same splats in any batch
        torch.testing.assert_close(a.splats.means, b.splats.means, rtol=0, atol=1e-5)


def test_running_out_of_memory_is_said_with_the_image_size(monkeypatch):
    """Regression: the item's error was the allocator's raw text ('DefaultCPUAllocator: can't allocate
    memory: you tried to allocate 1536000000 bytes ...')."""
    def fit(images, n, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1536000000 bytes. Error code 12")
    monkeypatch.setattr(stream_mod, "fit_images", fit)
    items = list(FitStream(4, FitConfig(iters=1), batch_size=2)(enumerate([torch.zeros(3, 1000, 2000)] * 2)))
    assert [it.error for it in items] == ["fit failed: out of memory for a 2000x1000 image (a CPU fit holds about "
                                          "0.6 GB for one image of this size); fit it at a smaller size"] * 2
