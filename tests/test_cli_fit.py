import json

import pytest
import torch

from gaussianvision.apps.cli.command import CliError
from gaussianvision.apps.cli.main import main as gsv
from gaussianvision.data.images import save_png
from gaussianvision.splats import load


@pytest.fixture()
def mixed_folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    save_png(torch.rand(3, 20, 28, generator=g), d / "noise.png")
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 24), indexing="ij")
    save_png(torch.stack([xx, yy, xx * yy]), d / "sub" / "ramp.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image, and not picked up from a folder")
    return d


def test_fit_folder_reports_bad_images_and_fits_the_rest(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = gsv(["fit", str(mixed_folder), "--gaussians", "20", "--iters", "8", "--size", "16", "--out", str(out),
              "--save-png", "--backend", "reference", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert sorted(r["path"].split("/")[-1] for r in d["results"]) == ["noise.png", "ramp.png"]
    bad = {f["path"].split("/")[-1]: f["error"] for f in d["failures"]}
    assert set(bad) == {"broken.png", "empty.jpg"}
    assert "zero bytes" in bad["empty.jpg"] and "broken.png" in bad["broken.png"]
    for r in d["results"]:
        s = load(r["output"])
        assert (s.height, s.width, s.max_gaussians) == (16, 16, 20) == (16, 16, r["n_gaussians"])
        assert r["bytes"] == 32 + 16 * 20 and r["compression_ratio"] == pytest.approx(3 * 16 * 16 / r["bytes"])
        assert r["iterations"] == 8 and r["psnr"] > 5 and 0 < r["ssim"] <= 1 and r["seconds"] > 0
        assert (out / (r["output"].split("/")[-1][:-4] + ".png")).exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["fitted"] == 2 and saved["failed"] == 2
    (tmp_path / "nothing").mkdir()  # regression (trial 6): an empty folder beside other inputs went unsaid
    assert gsv(["fit", str(tmp_path / "nothing"), str(mixed_folder / "noise.png"), "-n", "4", "--iters", "1",
                "--size", "16", "--out", str(tmp_path / "o2"), "--json"]) == 0
    assert f"gsv fit: no images in folder {tmp_path / 'nothing'}" in capsys.readouterr().err


def test_fit_with_pruning_and_explicit_files(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = gsv(["fit", str(mixed_folder / "noise.png"), str(mixed_folder / "notes.txt"), "-n", "20", "--iters", "4",
              "--size", "0", "--prune-fraction", "0.25", "--finetune", "2", "--out", str(out),
              "--backend", "reference", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    (r,), (f,) = d["results"], d["failures"]
    assert "notes.txt" in f["path"] and "not an image" in f["error"]
    assert r["n_gaussians"] == 15 and r["iterations"] == 6 and (r["height"], r["width"]) == (20, 28)
    assert load(r["output"]).max_gaussians == 15


def test_fit_all_bad_and_bad_options(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    assert gsv(["fit", str(tmp_path / "x.png"), "-n", "4", "--out", str(tmp_path / "o"), "--json"]) == 2
    cap = capsys.readouterr()  # one JSON document: the failures and the reason
    d = json.loads(cap.out)
    assert d["failed"] == 1 and d["error"].startswith("every input failed") and d["error"] in cap.err
    assert gsv(["fit", str(tmp_path / "x.png"), "-n", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--gaussians must be >= 1" in capsys.readouterr().err
    assert gsv(["fit", str(tmp_path / "x.png"), "-n", "4", "--prune-fraction", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--prune-fraction must lie in [0, 1], got 2.0" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--plateau", "0"], "gsv fit: --plateau must be >= 1 iteration"),
    (["--prune-lambda", "nan"], "gsv fit: --prune-lambda must be a finite number >= 0, got nan"),
    (["--target-psnr", "-5"], "gsv fit: --target-psnr must be a number of dB above 0"),
    (["--iters", "3", "--finetune", "-1", "--prune-fraction", "0.5"], "gsv fit: --iters and --finetune must be >= 0, got 3, -1"),
    (["--fit-option", "lr_colors=-1"], "gsv fit: lr_colors must be a finite number >= 0"),  # no flag: its own name
    # regression (trial 8): accepted and ignored, exit 0
    (["--finetune", "50"], "gsv fit: --finetune 50: has no effect without --prune-tau or --prune-fraction"),
    (["--prune-measure", "luma"], "gsv fit: --prune-measure luma: has no effect without --prune-tau or --prune-fraction"),
    (["--relocate-fraction", "0.5"], "gsv fit: --relocate-fraction 0.5: has no effect without relocation"),
    (["--progressive-order", "greedy"], "gsv fit: --progressive-order greedy: goes with --progressive"),
    (["--fit-option", "finetune_iters=9"], "gsv fit: --fit-option finetune_iters=9: has no effect without --prune-tau"),
    (["--fit-option", "relocate_until=0.3"], "gsv fit: --fit-option relocate_until=0.3: has no effect without relocation"),
])
def test_a_bad_value_is_named_by_the_flag_that_set_it(tmp_path, capsys, args, message):
    """Regression: these values were taken silently, and errors named internal fields (plateau_patience)."""
    assert gsv(["fit", str(tmp_path / "x.png"), "-n", "4", "--out", str(tmp_path / "o"), *args]) == 2
    assert capsys.readouterr().err.strip().startswith(message)


def test_an_empty_path_is_refused(tmp_path, capsys):
    """Regression: --out "" wrote into the current folder (Path("") is "."), and an input "" fitted it."""
    with pytest.raises(SystemExit) as e:
        gsv(["fit", str(tmp_path / "x.png"), "-n", "4", "--out", ""])
    assert e.value.code == 2 and "argument --out: expected a path, got ''" in capsys.readouterr().err
    for args in (["fit", "", "-n", "4"], ["convert", "--input", "", "--output", str(tmp_path / "c"), "-n", "4"]):
        with pytest.raises(SystemExit) as e:  # the inputs too: "" read the current folder
            gsv(args)
        assert e.value.code == 2 and "expected a path, got ''" in capsys.readouterr().err


def test_flags_that_need_another_are_taken_with_it(mixed_folder, tmp_path, capsys):
    """The flags refused alone above work beside what they need (a preset that relocates counts)."""
    from gaussianvision.apps.cli import convert, send
    noise = str(mixed_folder / "noise.png")
    base = ["-n", "8", "--iters", "4", "--size", "16", "--backend", "reference", "--no-progress"]
    assert gsv(["fit", noise, *base, "--prune-fraction", "0.5", "--finetune", "2", "--prune-measure", "luma",
                "--out", str(tmp_path / "a")]) == 0
    assert gsv(["fit", noise, *base, "--preset", "fast", "--relocate-fraction", "0.2", "--out", str(tmp_path / "b")]) == 0
    assert gsv(["fit", noise, *base, "--prune-fraction", "0.5", "--fit-option", "finetune_iters=2",
                "--out", str(tmp_path / "d")]) == 0
    assert gsv(["fit", noise, *base, "--progressive", "--progressive-order", "greedy", "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert gsv(["info", str(tmp_path / "c" / "noise.gsv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["progressive"]
    for mod, args in ((convert, ["--input", "x", "--output", "y", "--gaussians", "8"]),
                      (send, ["x", "--url", "http://127.0.0.1:8", "--gaussians", "8"])):
        a = mod._parser().parse_args(args + ["--progressive-order", "eliminate"])
        with pytest.raises(CliError, match="^--progressive-order eliminate: goes with --progressive"):
            mod._config(a) if mod is convert else mod._fit_stream(a)


def test_convert_names_a_bad_value_by_its_flag_too():
    from gaussianvision.apps.cli import convert
    a = convert._parser().parse_args(["--input", "x", "--output", "y", "--gaussians", "8", "--prune-lambda", "-1"])
    with pytest.raises(CliError, match=r"^--prune-lambda must be a finite number >= 0, got -1.0"):
        convert._config(a)
    a = convert._parser().parse_args(["--input", "x", "--output", "y", "--gaussians", "8", "--target-psnr", "0"])
    with pytest.raises(CliError, match=r"^--target-psnr must be a number of dB above 0 \(or not given\), got 0.0$"):
        convert._config(a)


def test_show_writes_a_png(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert gsv(["fit", str(mixed_folder / "sub"), "-n", "12", "--iters", "3", "--size", "16", "--out", str(out),
                "--backend", "reference", "--json"]) == 0
    capsys.readouterr()
    png = tmp_path / "show.png"
    assert gsv(["show", str(out / "ramp.gsv"), "--image", str(mixed_folder / "sub" / "ramp.png"), "--out", str(png),
                "--backend", "reference", "--json"]) == 0
    from PIL import Image
    im = Image.open(png)
    assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # three panels side by side
    shown = capsys.readouterr()
    assert json.loads(shown.out)["n_gaussians"] == 12 and json.loads(shown.out)["psnr_vs_image"] > 15
    assert "warning" not in shown.err
    # regression (new-user trial): an unrelated original was cropped and drawn beside the render without a word
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 24), indexing="ij")
    save_png(1 - torch.stack([xx, yy, xx * yy]), tmp_path / "other.png")
    assert gsv(["show", str(out / "ramp.gsv"), "--image", str(tmp_path / "other.png"), "--out", str(png),
                "--backend", "reference", "--json"]) == 0
    shown = capsys.readouterr()
    agree = json.loads(shown.out)["psnr_vs_image"]
    assert agree < 12 and shown.err.startswith(f"gsv show: warning: {tmp_path / 'other.png'} is not like the render "
                                               f"of {out / 'ramp.gsv'} (PSNR {agree:.1f} dB, under 12)")
    (tmp_path / "bad.gsv").write_bytes(b"nope")
    assert gsv(["show", str(tmp_path / "bad.gsv"), "--out", str(png)]) == 2
    assert "bad.gsv" in capsys.readouterr().err


def test_show_takes_the_original_as_the_splats_saw_it():
    """Regression (trial 6): gsv show --image took the centre square of a non-square original and stretched
    it to non-square splats (zoomed and shifted against the render). Now: the centre cropped to the splats'
    aspect ratio (none for the same ratio), then their size."""
    from gaussianvision.apps.cli.show import _like_splats
    orig = (torch.arange(60.0) / 59).expand(3, 40, 60).clone()  # each pixel holds its column's place
    same = _like_splats(orig, 16, 24)  # a 40x60 photo fitted at its own ratio: all of it, resized
    assert same.shape == (3, 16, 24) and same[0, :, 0].max() < 0.05 and same[0, :, -1].min() > 0.95
    square = _like_splats(orig, 16, 16)  # fitted with --size: its centre 40x40 square (columns 10..49)
    assert square.shape == (3, 16, 16)
    assert abs(float(square[0, 0, 0]) - 11 / 59) < 0.03 and abs(float(square[0, 0, -1]) - 48 / 59) < 0.03
    tall = _like_splats(orig.transpose(1, 2).contiguous(), 24, 16)  # 60x40 rows hold the ramp now
    assert tall.shape == (3, 24, 16) and tall[0, 0, :].max() < 0.05 and tall[0, -1, :].min() > 0.95
    assert _like_splats(orig, 40, 60) is orig


def test_fit_files_are_the_bytes_of_fit_images_on_each_size_batch(tmp_path, capsys):
    """gsv fit runs the library's FitStream: images of one size share a batch (--batch-size), and
    each NAME.gsv is exactly the encoding of fit_images on that batch (same config, same seed)."""
    from gaussianvision.data.images import load_image
    from gaussianvision.fit import FitConfig, fit_images
    from gaussianvision.splats import encode
    d = tmp_path / "in"
    d.mkdir()
    g = torch.Generator().manual_seed(3)
    for name, (h, w) in {"a": (12, 16), "b": (14, 14), "c": (12, 16), "d": (14, 14), "e": (12, 16)}.items():
        save_png(torch.rand(3, h, w, generator=g), d / f"{name}.png")
    out = tmp_path / "out"
    assert gsv(["fit", str(d), "-n", "7", "--iters", "3", "--size", "0", "--batch-size", "2", "--dtype", "float32",
                "--out", str(out), "--backend", "reference", "--json"]) == 0
    results = {r["path"].split("/")[-1][0]: r for r in json.loads(capsys.readouterr().out)["results"]}
    cfg = FitConfig(iters=3, backend="reference", device="cpu")
    for batch in (["a", "c"], ["b", "d"], ["e"]):
        res = fit_images(torch.stack([load_image(d / f"{k}.png", size=None, min_side=11) for k in batch]), 7,
                         config=cfg)
        for j, k in enumerate(batch):
            assert (out / f"{k}.gsv").read_bytes() == encode(res.splats[j], dtype="float32")
            assert results[k]["batch_size"] == len(batch) and results[k]["psnr"] == res.metrics[j]["psnr"]


def test_fit_option_reaches_fit_images_and_refuses_flags_and_unknown_names(tmp_path, capsys):
    """gsv fit --fit-option KEY=VALUE: any fit_images option without a flag of its own (as convert
    and eval take it); the same fit as fit_images with that option."""
    from gaussianvision.fit import fit_images
    img = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3))
    save_png(img, tmp_path / "a.png")
    out = tmp_path / "o"
    assert gsv(["fit", str(tmp_path / "a.png"), "-n", "8", "--iters", "6", "--size", "0", "--out", str(out),
                "--fit-option", "color_solve=4", "--fit-option", "coarse_fraction=0.5", "--json"]) == 0
    capsys.readouterr()
    from gaussianvision.data.images import load_image
    want = fit_images(load_image(tmp_path / "a.png", size=None)[None], 8, iters=6, color_solve=4, coarse_fraction=0.5)
    assert torch.equal(load(out / "a.gsv").colors, want.splats.colors.half().float())
    for opt, msg in (("iters=3", "--fit-option iters=...: give it as --iters"), ("bogus=1", "fit options ['bogus']"),
                     ("plateau_patience=3", "give it as --plateau")):
        assert gsv(["fit", str(tmp_path / "a.png"), "-n", "8", "--out", str(out), "--fit-option", opt]) == 2
        assert msg in capsys.readouterr().err


def test_progressive_options_that_do_not_combine_are_one_line_before_any_work(tmp_path, capsys):
    """Regression (trial 6): --progressive with --ssim-weight was a traceback (exit 1) from the stream in
    gsv fit and gsv convert; prefix_fractions=0.25,1.0 (docs/data.md's form) was refused as out of
    range, and prefix_fractions=0.25 dumped the options with "'float' object is not iterable"."""
    from gaussianvision.apps.cli.command import fit_option
    assert fit_option("prefix_fractions=0.25,1.0") == ("prefix_fractions", [0.25, 1.0])
    assert fit_option("backend=numba") == ("backend", "numba") and fit_option("x=a,b") == ("x", "a,b")
    assert fit_option("prefix_fractions=.5,1") == ("prefix_fractions", [0.5, 1])
    from gaussianvision.fit import FitConfig
    with pytest.raises(ValueError, match="prefix_weights must be a list of weights"):
        FitConfig(prefix_fractions=(0.5, 1.0), prefix_weights=1.0).check()
    save_png(torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3)), tmp_path / "a.png")
    base = ["fit", str(tmp_path / "a.png"), "-n", "8", "--iters", "2", "--size", "16", "--out", str(tmp_path / "o"),
            "--progressive"]
    assert gsv(base + ["--ssim-weight", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv fit: --progressive: a nested fit") and "--ssim-weight" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert gsv(base + ["--fit-option", "prefix_fractions=0.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert "prefix_fractions must be a list of fractions in (0, 1]" in err and "not iterable" not in err
    assert gsv(base + ["--fit-option", "prefix_fractions=0.25,1.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fitted"] == 1
    assert gsv(["convert", "--input", str(tmp_path), "--output", str(tmp_path / "c"), "-n", "8", "--progressive",
                "--fit-option", "ssim_weight=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv convert: --progressive: a nested fit") and len(err.splitlines()) == 1
    # regression (new-user trial): prefix_fractions without --progressive ran the nested fit and wrote a plain file,
    # whose prefixes the reader refused; with another order the nested fit's blocks were reordered away
    plain = [a for a in base if a != "--progressive"] + ["--fit-option", "prefix_fractions=0.5,1"]
    for extra, tail in (([], "add --progressive"), (["--progressive", "--progressive-order", "greedy"],
                                                     "use --progressive-order nested (the default) or drop prefix_fractions")):
        assert gsv(plain + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"gsv fit: --fit-option prefix_fractions=0.5,1: a nested fit, whose prefixes only a progressive " \
                      f"file in nested order keeps; {tail}", err
    assert gsv(["convert", "--input", str(tmp_path), "--output", str(tmp_path / "c"), "-n", "8",
                "--fit-option", "prefix_fractions=0.5,1"]) == 2
    assert capsys.readouterr().err.startswith("gsv convert: --fit-option prefix_fractions=0.5,1: a nested fit")


def test_an_out_folder_that_refuses_files_is_refused_before_any_fit(tmp_path, capsys, monkeypatch):
    """Regression (trial 6): --out that exists but takes no file (another user's folder; as root, sysfs)
    passed the check and failed after every image was fitted."""
    import gaussianvision.apps.cli.command as command
    import gaussianvision.apps.cli.fit as fit_cli
    save_png(torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3)), tmp_path / "a.png")
    (tmp_path / "ro").mkdir()

    def refuse(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(command, "check_writable", refuse)
    monkeypatch.setattr(fit_cli, "FitStream", None)  # a fit would fail loudly
    assert gsv(["fit", str(tmp_path / "a.png"), "-n", "8", "--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gsv fit: --out {tmp_path / 'ro'}: not a writable folder (Permission denied)"


def test_more_gaussians_than_pixels_is_refused(tmp_path, capsys):
    """Regression (trial 6): --gaussians 100000000 on --size 11 grew until the process was killed for memory;
    up front for a given --size, and per image (a recorded failure, the batch goes on) with --size 0."""
    from gaussianvision.fit import fit_images
    save_png(torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(3)), tmp_path / "a.png")
    assert gsv(["fit", str(tmp_path / "a.png"), "--size", "11", "-n", "100000000", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("gsv fit: --gaussians 100000000 is more than the 11x11 images' 121 pixels (--size 11); "
                   "give at most one per pixel")
    assert gsv(["convert", "--input", str(tmp_path), "--output", str(tmp_path / "c"), "-n", "50177"]) == 2
    assert "--gaussians 50177 is more than the 224x224 images' 50176 pixels" in capsys.readouterr().err
    with pytest.raises(ValueError, match="145 Gaussians is more than the 12x12 image's 144 pixels"):
        fit_images(torch.rand(1, 3, 12, 12), 145, iters=1)
    from gaussianvision.eval.datasets import SplatSettings
    with pytest.raises(ValueError, match="^n_gaussians 400 is more than the 16x16 images' 256 pixels"):
        SplatSettings(400, iters=1, size=16)  # gsv eval --fit-size 16: named up front (was a traceback in the fit)
    assert gsv(["convert", "--input", str(tmp_path), "--output", str(tmp_path / "c"), "-n", "400", "--size", "-3"]) == 2
    assert "--gaussians" not in capsys.readouterr().err  # a bad --size is said as such
    assert gsv(["fit", str(tmp_path / "a.png"), "--size", "0", "-n", "145", "--out", str(tmp_path / "o"), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["fitted"] == 0 and "more than the 12x12 image's 144 pixels" in out["failures"][0]["error"]


def test_preset_and_budget_reach_the_fit_and_the_report_says_what_was_reached(tmp_path, capsys):
    """gsv fit --preset: the preset's settings with the flags given beside it over them (the same
    splats as fit_images with that config); --budget-ms stops the batch and the report says so."""
    from gaussianvision.data.images import load_image
    from gaussianvision.fit import FitConfig, fit_images
    g = torch.Generator().manual_seed(4)
    for name in ("a", "b"):
        save_png(torch.rand(3, 24, 24, generator=g), tmp_path / f"{name}.png")
    out = tmp_path / "o"
    args = ["fit", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-n", "8", "--size", "0", "--out", str(out)]
    assert gsv(args + ["--preset", "fast", "--iters", "7", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    c = d["config"]
    assert (c["preset"], c["iters"], c["color_solve"], c["coarse_fraction"], c["relocate_every"]) == ("fast", 7, 4, 0.6, 20)
    imgs = torch.stack([load_image(tmp_path / f"{n}.png", size=None) for n in ("a", "b")])
    want = fit_images(imgs, 8, config=FitConfig.from_options({"preset": "fast", "iters": 7}))
    from gaussianvision.splats import decode, encode
    assert torch.equal(load(out / "a.gsv").means, decode(encode(want.splats[0])).means)
    assert d["reached"]["mean_psnr"] == pytest.approx(sum(r["psnr"] for r in d["results"]) / 2)
    assert gsv(args + ["--preset", "best", "--budget-ms", "30", "--relocate-every", "0", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["config"]
    assert (c["iters"], c["relocate_every"]) == (2000, 0)  # the preset's own iterations; the flag over its relocation
    assert gsv(args + ["--budget-ms", "0.001", "--iters", "50"]) == 0
    text = capsys.readouterr().out
    assert "(stopped: budget)" in text and "2 stopped at the budget" in text and "reached: mean" in text
    # a budget under the start's own cost is passed whatever the iterations: the report says so
    assert "note: 2 of 2 took over --budget-ms 0.001: the initialization and the final metrics" in text
    assert gsv(args + ["--budget-ms", "100000", "--iters", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reached"]["over_budget"] == 0
    assert gsv(args + ["--fit-option", "preset=fast"]) == 2
    assert "--fit-option preset=...: give it as --preset" in capsys.readouterr().err


def test_convert_and_eval_take_the_preset_and_budget():
    from gaussianvision.apps.cli import convert, eval as eval_cli
    a = convert._parser().parse_args(["--input", "x", "--output", "y", "--gaussians", "8", "--preset", "fast",
                                      "--budget-ms", "90"])
    assert convert._config(a).fit_options == {"preset": "fast", "budget_ms": 90.0}
    p = eval_cli.build_parser()
    base = ["--model", "gs:x", "--dataset", "cifar10"]
    e = p.parse_args(base + ["--fit-preset", "fast", "--fit-budget-ms", "40"])
    s = eval_cli.splat_settings(e)
    assert (s.iters, s.fit_options) == (150, {"preset": "fast", "budget_ms": 40.0})
    e = p.parse_args(base + ["--fit-preset", "best", "--fit-iters", "9"])
    assert (eval_cli.splat_settings(e).iters, eval_cli._fit_options(e)) == (9, {"preset": "best"})
    e = p.parse_args(base)  # neither: the settings (and the cache keys) of runs before presets existed
    assert (eval_cli.splat_settings(e).iters, eval_cli._fit_options(e)) == (500, {})
    with pytest.raises(CliError, match="^--fit-budget-ms must be a finite number above 0"):  # regression: it named --fit-option
        eval_cli.splat_settings(p.parse_args(base + ["--fit-budget-ms", "-5"]))


def test_convert_refuses_a_fit_option_that_contradicts_its_flag():
    """Regression: --fit-option preset=best silently replaced --preset fast (the same value is allowed)."""
    from gaussianvision.apps.cli import convert
    base = ["--input", "x", "--output", "y", "--gaussians", "8", "--preset", "fast"]
    with pytest.raises(CliError, match="--fit-option preset='best': also given as --preset 'fast'"):
        convert._config(convert._parser().parse_args(base + ["--fit-option", "preset=best"]))
    a = convert._parser().parse_args(base + ["--fit-option", "preset=fast", "--fit-option", "relocate_every=5"])
    assert convert._config(a).fit_options == {"preset": "fast", "relocate_every": 5}
    a = convert._parser().parse_args(base + ["--fit-option", "relocate_every=5", "--fit-option", "relocate_every=7"])
    assert convert._config(a).fit_options == {"preset": "fast", "relocate_every": 7}  # the last option wins


def test_splat_settings_take_a_presets_iterations_unless_given():
    """Regression: SplatSettings(fit_options={"preset": "fast"}) fitted 500 iterations (its default),
    not the preset's 150; the key holds the number, as keys made before presets did."""
    from gaussianvision.eval import SplatSettings
    assert SplatSettings(fit_options={"preset": "fast"}).iters == 150
    assert SplatSettings(iters=7, fit_options={"preset": "fast"}).iters == 7
    assert SplatSettings().iters == 500 and '"iters": 500' in SplatSettings().key()


def test_output_names_never_collide_nor_overwrite_an_input(tmp_path, capsys):
    """a/x.png, b/x.png and x_1.png get x, x_2 and x_1 (regression: b/x.png became x_1 and x_1.png
    overwrote it); fitting a folder into itself with --save-png leaves the photo as it was
    (regression: NAME.png replaced it with the reconstruction)."""
    g = torch.Generator().manual_seed(5)
    for rel in ("a/x.png", "b/x.png", "x_1.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        save_png(torch.rand(3, 16, 16, generator=g), tmp_path / rel)
    out = tmp_path / "o"
    args = ["-n", "4", "--iters", "2", "--size", "16", "--backend", "reference", "--json"]
    assert gsv(["fit", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), str(tmp_path / "x_1.png"),
                "--out", str(out)] + args) == 0
    d = json.loads(capsys.readouterr().out)
    outputs = {r["path"].split(str(tmp_path) + "/")[1]: r["output"].split("/")[-1] for r in d["results"]}
    assert outputs == {"a/x.png": "x.gsv", "b/x.png": "x_2.gsv", "x_1.png": "x_1.gsv"}
    assert sorted(p.name for p in out.glob("*.gsv")) == ["x.gsv", "x_1.gsv", "x_2.gsv"]
    photo = (tmp_path / "x_1.png").read_bytes()
    assert gsv(["fit", str(tmp_path / "x_1.png"), "--out", str(tmp_path), "--save-png"] + args) == 0
    rec = json.loads(capsys.readouterr().out)["results"][0]
    assert (tmp_path / "x_1.png").read_bytes() == photo and rec["png"].endswith("x_1_1.png")


def test_a_rerun_into_the_input_folder_does_not_fit_its_own_renders(tmp_path, capsys):
    """Regression: `gsv fit DIR --out DIR --save-png` run twice fitted the first run's reconstructions
    (NAME.png) as new photos; they are skipped and said, unless named."""
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(6)), tmp_path / "photo.png")
    args = ["fit", str(tmp_path), "--out", str(tmp_path), "--save-png", "-n", "4", "--iters", "2", "--size", "16",
            "--backend", "reference", "--json"]
    assert gsv(args) == 0
    first = json.loads(capsys.readouterr().out)["results"]
    assert [r["png"].split("/")[-1] for r in first] == ["photo_1.png"]
    assert gsv(args) == 0
    cap = capsys.readouterr()
    assert [r["path"].split("/")[-1] for r in json.loads(cap.out)["results"]] == ["photo.png"]
    assert f"skipped 1 render of splats that gsv wrote (e.g. {tmp_path / 'photo_1.png'})" in cap.err
    assert gsv(["fit", str(tmp_path / "photo_1.png"), "--out", str(tmp_path / "o")] + args[4:]) == 0  # named: fitted
    assert [r["path"] for r in json.loads(capsys.readouterr().out)["results"]] == [str(tmp_path / "photo_1.png")]
    (tmp_path / "photo.png").unlink()
    assert gsv(args) == 2
    assert "(only renders gsv wrote, which are skipped: name them to fit them)" in capsys.readouterr().out


def test_inputs_may_come_before_between_or_after_the_options(tmp_path, capsys):
    """Regression: an input after an option was refused ("unrecognized arguments")."""
    g = torch.Generator().manual_seed(7)
    for name in ("a", "b", "c"):
        save_png(torch.rand(3, 16, 16, generator=g), tmp_path / f"{name}.png")
    assert gsv(["fit", str(tmp_path / "a.png"), "-n", "4", str(tmp_path / "b.png"), "--iters", "1", "--size", "16",
                "--out", str(tmp_path / "o"), str(tmp_path / "c.png"), "--json"]) == 0
    assert [r["path"][-5:] for r in json.loads(capsys.readouterr().out)["results"]] == ["a.png", "b.png", "c.png"]
    for bad, says in ((["-n", "4", "--json", "--bogus"], "required: inputs"),
                      ([str(tmp_path / "a.png"), "-n", "4", "--json", "--bogus"], "unrecognized arguments: --bogus")):
        with pytest.raises(SystemExit) as e:
            gsv(["fit", *bad])
        assert e.value.code == 2 and says in json.loads(capsys.readouterr().out)["error"]  # still JSON with --json


def test_a_name_like_an_option_after_dashes_and_an_input_named_twice(tmp_path, capsys, monkeypatch):
    """Regression: `gsv fit -- -x.png` said 'required: inputs'; an image named twice (and inside a
    folder named too) was fitted once per naming and its lines came out of order."""
    g = torch.Generator().manual_seed(8)
    (tmp_path / "d").mkdir()
    for name in ("-x.png", "d/a.png", "d/b.png"):
        save_png(torch.rand(3, 16, 16, generator=g), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    args = ["-n", "4", "--iters", "1", "--size", "16", "--out", "o", "--json"]
    assert gsv(["fit", *args, "--", "-x.png"]) == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)["results"]] == ["-x.png"]
    assert gsv(["fit", "d/a.png", "d/a.png", "d", "d/./a.png", *args]) == 0
    out = capsys.readouterr()
    assert [r["path"] for r in json.loads(out.out)["results"]] == ["d/a.png", "d/b.png"]
    assert "skipped 3 repeats of inputs named before" in out.err
    # a folder given by a symlink too, and a link to an image beside it (new-user trial: fitted twice)
    (tmp_path / "link").symlink_to(tmp_path / "d", target_is_directory=True)
    (tmp_path / "d" / "c.png").symlink_to(tmp_path / "d" / "a.png")
    assert gsv(["fit", "d", "link", *args]) == 0
    out = capsys.readouterr()
    assert [r["path"] for r in json.loads(out.out)["results"]] == ["d/a.png", "d/b.png"]
    assert "skipped 4 repeats of inputs named before" in out.err
    # a render gsv wrote, met in a folder and set aside, then named through a link: fitted (review finding)
    from gaussianvision.apps.cli.render import write_png
    write_png(torch.rand(3, 16, 16, generator=g), tmp_path / "d" / "r.png")
    (tmp_path / "r_link.png").symlink_to(tmp_path / "d" / "r.png")
    assert gsv(["fit", "d", "r_link.png", *args]) == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)["results"]] == ["d/a.png", "d/b.png", "d/r.png"]


def test_the_report_says_how_many_fits_are_exact_at_the_psnr_cap(tmp_path, capsys):
    """A flat image is fitted exactly: its PSNR is the cap (120 dB), and the report says how many such
    images its mean counts (they inflate it)."""
    save_png(torch.full((3, 16, 16), 0.0), tmp_path / "black.png")
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(9)), tmp_path / "noise.png")
    args = ["fit", str(tmp_path), "-n", "4", "--iters", "30", "--size", "16", "--init", "grid", "--out",
            str(tmp_path / "o"), "--fit-option", "lr_colors=0.2"]
    assert gsv(args) == 0
    text = capsys.readouterr().out
    assert "black.png: 120.00 dB" in text and "; 1 exact (counted at 120 dB)" in text


def test_sizes_too_large_and_output_names_too_long_are_handled(tmp_path, capsys):
    """Regressions: --size 20000 ended in Pillow's DecompressionBombError traceback; an input named with
    240 characters aborted the whole run (its temporary output name passed the file system's 255 bytes)."""
    from gaussianvision.data.images import load_image
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(10)), tmp_path / "a.png")
    assert gsv(["fit", str(tmp_path / "a.png"), "-n", "4", "--size", "20000", "--out", str(tmp_path / "o")]) == 2
    assert "--size must be 0 (keep the original size) or one side of 11 to 8000 pixels" in capsys.readouterr().err
    for bad in (0, -5, 3.5, 20000):
        with pytest.raises(ValueError, match=r"load_image: size must be a whole number of pixels from 1 to 8000"):
            load_image(tmp_path / "a.png", size=bad)
    long = tmp_path / "in"
    long.mkdir()
    for name in ("M" * 240 + ".png", "M" * 241 + ".png", "c.png"):
        save_png(torch.rand(3, 16, 16), long / name)  # (the atomic write's temporary name keeps within 255 bytes)
    assert gsv(["fit", str(long), "-n", "4", "--iters", "1", "--size", "16", "--out", str(tmp_path / "o"), "--json"]) == 0
    outs = sorted(r["output"].split("/")[-1] for r in json.loads(capsys.readouterr().out)["results"])
    assert outs == ["M" * 200 + ".gsv", "M" * 200 + "_1.gsv", "c.gsv"]


def test_results_json_holds_what_was_reached_and_says_how_many_reached_the_target(tmp_path, capsys):
    """Regression: "reached" was added to the summary after results.json was written; the printed line
    did not say how many images reached the target."""
    save_png(torch.full((3, 16, 16), 0.5), tmp_path / "flat.png")
    out = tmp_path / "o"
    assert gsv(["fit", str(tmp_path / "flat.png"), "-n", "4", "--size", "16", "--target-psnr", "20",
                "--out", str(out), "--backend", "reference"]) == 0
    assert "1 of 1 at or above 20 dB" in capsys.readouterr().out
    reached = json.loads((out / "results.json").read_text())["reached"]
    assert reached["reached_target"] == 1 and reached["target_psnr"] == 20.0


def test_a_file_name_too_long_is_one_failure_and_the_rest_is_fitted(tmp_path, capsys):
    """Regression: a name over the file system's limit raised OSError from list_images (a traceback,
    nothing fitted); --out with such a name is one line and exit 2."""
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(6)), tmp_path / "ok.png")
    long = tmp_path / ("y" * 300 + ".png")
    out = tmp_path / "o"
    args = ["-n", "4", "--iters", "2", "--size", "16", "--backend", "reference"]
    assert gsv(["fit", str(long), str(tmp_path / "ok.png"), "--out", str(out), "--json"] + args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fitted"] == 1 and "File name too long" in d["failures"][0]["error"]
    assert gsv(["fit", str(tmp_path / "ok.png"), "--out", str(tmp_path / ("z" * 300))] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "File name too long" in err and "Traceback" not in err


def test_names_with_a_newline_or_a_tab_stay_on_their_own_line(tmp_path, capsys):
    """Regression: a file named with a newline was printed raw, breaking its result line (and a failure's
    or an error's) in two; such characters are escaped as Python writes them."""
    from gaussianvision.data.shards import show
    assert show("a\nb\tc.png") == "a\\nb\\tc.png" and show("plain é.png") == "plain é.png"
    assert show("x" * 400, None) == "x" * 400 and show("\udcff.png") == "\\udcff.png"
    assert show("写真\u30001.png") == "写真\u30001.png" and show("a\u202eb") == "a\\u202eb"  # spaces print
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(7)), tmp_path / "good\nname.png")
    (tmp_path / "bad\tname.png").write_bytes(b"not an image")
    args = ["-n", "4", "--iters", "2", "--size", "16", "--backend", "reference", "--no-progress"]
    assert gsv(["fit", str(tmp_path), "--out", str(tmp_path / "o\nut")] + args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("good\\nname.png: ") and lines[1].startswith("FAILED ") and "bad\\tname.png" in lines[1]
    assert len(lines) == 4 and lines[3].endswith("o\\nut/")  # the result, the failure, reached, fitted
    (tmp_path / "a\nfile").write_bytes(b"")
    assert gsv(["fit", str(tmp_path / "good\nname.png"), "--out", str(tmp_path / "a\nfile")] + args) == 2
    err = capsys.readouterr().err  # an error naming it (CliError): one line too
    assert err.count("\n") == 1 and "a\\nfile is not a folder" in err


def test_a_broken_link_in_a_folder_is_said_by_fit_convert_and_send(tmp_path, capsys):
    """Regression: a folder's broken link named like an image (photo.jpg -> a file since removed) was left
    out without a word; gsv fit, convert and send say it (it is no sample: no key, no failure)."""
    d = tmp_path / "in"
    d.mkdir()
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(8)), d / "ok.png")
    (d / "gone.jpg").symlink_to(tmp_path / "removed.jpg")
    args = ["-n", "4", "--iters", "1", "--size", "16", "--backend", "reference", "--no-progress"]
    assert gsv(["fit", str(d), "--out", str(tmp_path / "o")] + args) == 0
    note = "skipped 1 entry named like an image but not a file (a broken link, a fifo; e.g. "
    assert f"gsv fit: {note}{d / 'gone.jpg'})" in capsys.readouterr().err
    assert gsv(["convert", "--input", str(d), "--output", str(tmp_path / "c"), "--json", "-n", "4", "--iters", "1",
                "--size", "16", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"gsv convert: {note.replace('an image', 'an input')}{d / 'gone.jpg'})" in captured.err
    s = json.loads(captured.out)
    assert s["run"]["skipped_entries"] == [str(d / "gone.jpg")] and s["converted"] == 1 and s["failed"] == 0
    import types
    from gaussianvision.apps.cli import send  # its inputs, once the server has answered
    assert [p.name for p in send._paths(types.SimpleNamespace(inputs=[str(d)]))] == ["ok.png"]
    assert f"gsv send: {note}{d / 'gone.jpg'})" in capsys.readouterr().err


def test_convert_of_a_glob_skips_what_is_no_file_as_a_folder_does(tmp_path, capsys):
    """Regression (new-user trial): `--input 'g/*.png'` refused the whole run over one broken link ("no such
    image file"), or a folder named y.png, where `--input g` converts the images and says what it skipped."""
    d = tmp_path / "g"
    d.mkdir()
    for i in range(2):
        save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)), d / f"ok{i}.png")
    (d / "gone.png").symlink_to(tmp_path / "removed.png")
    (d / "y.png").mkdir()
    assert gsv(["convert", "--input", str(d / "*.png"), "--output", str(tmp_path / "c"), "--json", "-n", "4",
                "--iters", "1", "--size", "16", "--no-progress"]) == 0
    captured = capsys.readouterr()
    s = json.loads(captured.out)
    assert (s["converted"], s["failed"]) == (2, 0)
    assert s["run"]["skipped_entries"] == [str(d / "gone.png"), str(d / "y.png")]
    assert f"gsv convert: skipped 2 entries named like an input but not a file (a broken link, a fifo; e.g. {d / 'gone.png'})" in captured.err
    assert gsv(["convert", "--input", str(d / "gone.png"), "--output", str(tmp_path / "c2"), "-n", "4"]) == 2  # named
    assert "gone.png: a broken link (to " in capsys.readouterr().err


def test_a_cut_progressive_file_is_read_by_render_info_and_show(tmp_path, capsys):
    """Regression (trial 8): the README's 'any prefix of a file is a coarser image' held in Python only; gsv
    render, info and show refused a byte prefix as truncated. A cut file without the flag still is."""
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(9)), tmp_path / "a.png")
    args = ["-n", "8", "--iters", "3", "--size", "16", "--backend", "reference", "--no-progress"]
    assert gsv(["fit", str(tmp_path / "a.png"), *args, "--progressive", "--out", str(tmp_path / "p")]) == 0
    assert gsv(["fit", str(tmp_path / "a.png"), *args, "--out", str(tmp_path / "q")]) == 0
    for kind in ("p", "q"):
        (tmp_path / f"{kind}.cut.gsv").write_bytes((tmp_path / kind / "a.gsv").read_bytes()[:32 + 16 * 4])
    capsys.readouterr()
    cut = tmp_path / "p.cut.gsv"
    note = f"{cut}: a cut progressive file: its first 4 of 8 Gaussians arrived"
    assert gsv(["render", str(cut), "--out", str(tmp_path / "r.png")]) == 0 and (tmp_path / "r.png").exists()
    assert f"gsv render: {note}" in capsys.readouterr().err
    assert gsv(["info", str(cut), "--json"]) == 0
    out = capsys.readouterr()
    d = json.loads(out.out)
    assert d["cut"] == {"declared": 8, "arrived": 4} and d["n_gaussians"] == 4 and f"gsv info: {note}" in out.err
    assert gsv(["show", str(cut), "--out", str(tmp_path / "s.png")]) == 0 and f"gsv show: {note}" in capsys.readouterr().err
    assert gsv(["render", str(tmp_path / "q.cut.gsv"), "--out", str(tmp_path / "r2" / "r2.png")]) == 2
    assert "it is not progressive" in capsys.readouterr().err and not (tmp_path / "r2").exists()  # nothing made
    assert gsv(["info", str(tmp_path / "p" / "a.gsv"), "--json"]) == 0 and "cut" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("value", ["5", "null", "abc", '[-5,"x"]'])
def test_record_at_that_is_no_list_of_iterations_is_refused_before_any_fit(value, tmp_path, capsys):
    """Regression (new-user trial): record_at=5 failed every image's fit ("'int' object is not iterable", exit 2
    after the work), and "abc" or [-5, "x"] were taken silently."""
    save_png(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)), tmp_path / "a.png")
    argv = [str(tmp_path / "a.png"), "-n", "4", "--iters", "2", "--size", "16", "--fit-option", f"record_at={value}"]
    assert gsv(["fit", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv fit: record_at must be a list of iterations") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    assert gsv(["convert", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "c"), *argv[1:]]) == 2
    assert "record_at must be a list of iterations" in capsys.readouterr().err


def test_record_at_takes_any_list_of_whole_iterations():
    """Review finding: the check refused a range, numpy integers and arrays, which worked before."""
    import numpy as np
    from gaussianvision.fit import FitConfig
    for value in (range(0, 6, 2), [np.int64(0), np.int64(2), np.int64(4)], np.array([0, 2, 4])):
        assert FitConfig.from_options({"record_at": value}).record_at == (0, 2, 4)


def test_photos_of_one_name_in_two_folders_are_told_apart_and_failures_name_no_api(tmp_path, capsys):
    # new-user trial: a/cat.png and b/cat.png printed two lines "cat.png: ..." (written as cat.gsv and cat_1.gsv);
    # a fit's failure read "fit failed: fit_images: 9000 Gaussians is more than ..."
    g = torch.Generator().manual_seed(0)
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        save_png(torch.rand(3, 24, 24, generator=g), tmp_path / "in" / sub / "cat.png")
    save_png(torch.rand(3, 24, 24, generator=g), tmp_path / "in" / "dog.png")
    save_png(torch.rand(3, 24, 24, generator=g), tmp_path / "in" / "fox.png")
    (tmp_path / "in" / "c").mkdir()
    save_png(torch.rand(3, 12, 12, generator=g), tmp_path / "in" / "c" / "fox.png")  # fails: its name still counts
    save_png(torch.rand(3, 12, 12, generator=g), tmp_path / "in" / "tiny.png")
    rc = gsv(["fit", str(tmp_path / "in"), "-n", "200", "--iters", "2", "--size", "0", "--out", str(tmp_path / "o"),
              "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert any(line.startswith(f"{tmp_path / 'in' / 'a' / 'cat.png'}: ") for line in lines), out
    assert any(line.startswith(f"{tmp_path / 'in' / 'b' / 'cat.png'}: ") for line in lines), out
    assert any(line.startswith("dog.png: ") for line in lines), out
    assert any(line.startswith(f"{tmp_path / 'in' / 'fox.png'}: ") for line in lines), out
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 2 and "tiny.png: fit failed: 200 Gaussians is more than" in failed[-1], out


def test_an_output_that_cannot_be_written_fails_its_image_not_the_run(tmp_path, capsys):
    """Regression (new-user trial): a folder named like one image's output (o/a.gsv) ended gsv fit with exit 2, the
    other images' files and results.json unwritten. That image is now a failure; the rest is written."""
    for name, seed in (("a", 1), ("b", 2)):
        save_png(torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(seed)), tmp_path / f"{name}.png")
    out = tmp_path / "o"
    (out / "a.gsv").mkdir(parents=True)
    assert gsv(["fit", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-n", "8", "--iters", "2", "--size", "16",
                "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in res["results"]] == [str(tmp_path / "b.png")] and (out / "b.gsv").is_file()
    (fail,) = res["failures"]
    assert fail["error"] == f"{tmp_path / 'a.png'}: fitted, but cannot write {out / 'a.gsv'} (Is a directory)", fail
    assert json.loads((out / "results.json").read_text())["failed"] == 1
    # --save-png: write_png's own error was a CliError that still ended the run (review finding); the .gsv goes too
    png_out = tmp_path / "p"
    (png_out / "a.png").mkdir(parents=True)
    assert gsv(["fit", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-n", "8", "--iters", "2", "--size", "16",
                "--out", str(png_out), "--save-png", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in res["results"]] == [str(tmp_path / "b.png")] and (png_out / "b.png").is_file()
    assert res["failures"][0]["error"].startswith(f"{tmp_path / 'a.png'}: fitted, but cannot write {png_out / 'a.png'}")
    assert not (png_out / "a.gsv").exists()
    # every image unwritten: exit 2, and the summary says they were fitted but not written
    assert gsv(["fit", str(tmp_path / "a.png"), "-n", "8", "--iters", "2", "--size", "16", "--out", str(out), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "every input failed (1 of 1; 1 fitted but not written); " \
                                                             "nothing was written"


def test_show_draws_a_thin_strip_in_panels_one_can_see(tmp_path, capsys):
    """Regression (new-user trial): a 15 x 3000 strip drew three panels about 3 px wide, titles overlapping. Now
    a panel's long side is at most MAX_PANEL_ASPECT times its short side, said in the title."""
    from PIL import Image
    from gaussianvision.apps.cli.show import MAX_PANEL_ASPECT, _panel_box
    assert _panel_box(3000, 15) == (4.0, 4.0 / MAX_PANEL_ASPECT) and _panel_box(20, 2000) == (1.0, 4.0)
    assert _panel_box(100, 200) == (2.0, 4.0) and _panel_box(224, 224) == (4.0, 4.0)
    yy = torch.linspace(0, 1, 600).view(600, 1).expand(600, 12)
    save_png(torch.stack([yy, 1 - yy, yy * 0.5]), tmp_path / "tall.png")
    out = tmp_path / "f"
    assert gsv(["fit", str(tmp_path / "tall.png"), "-n", "12", "--iters", "2", "--size", "0", "--out", str(out),
                "--backend", "reference", "--json"]) == 0
    capsys.readouterr()
    assert gsv(["show", str(out / "tall.gsv"), "--out", str(tmp_path / "s.png"), "--backend", "reference"]) == 0
    w, h = Image.open(tmp_path / "s.png").size
    assert w >= 2 * 150 and h <= 5 * 150  # two panels at least an inch wide each (150 dpi); was about 0.1 inch
