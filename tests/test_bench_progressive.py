"""The progressive benchmark's accuracy section finds the demo's model (apps/bench/progressive.py)."""
import pytest

from gaussianvision.apps.bench.progressive import DemoMissing, demo_model, main


def _demo(root, *ns):
    root.mkdir()
    (root / "results.json").write_text("{}")
    for n in ns:
        (root / f"stage2_n{n}").mkdir()
        (root / f"stage2_n{n}" / "gsclip.safetensors").write_bytes(b"")
    return root


def test_the_model_is_the_demos_stage_2_of_the_largest_n(tmp_path):
    """Regression: stage2_n76 was assumed, and after `gsv demo --quick` (stage2_n64) the section ended in a
    traceback."""
    assert demo_model(_demo(tmp_path / "quick", 64)) == (tmp_path / "quick" / "stage2_n64", 64)
    assert demo_model(_demo(tmp_path / "full", 19, 76)) == (tmp_path / "full" / "stage2_n76", 76)


def test_a_folder_without_a_demo_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "results.json").write_text("{}")  # finished, but no stage-2 model
    for given in (tmp_path / "nothing", tmp_path / "half"):
        with pytest.raises(DemoMissing, match="no finished demo there"):
            demo_model(given)
        assert main(["accuracy", "--demo", str(given), "--out", str(tmp_path / "res")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bench progressive: {given}: no finished demo there") and err.count("\n") == 1
    assert not (tmp_path / "res").exists()


def test_the_accuracy_section_reads_the_tasks_as_gsv_eval_does(tmp_path):
    """Review finding: its loader was built without the transform, so the tasks came as lists of PIL images and
    the splat source failed. The known answer of test_eval's colour task (a stub that sees colours: 50 %)."""
    from test_eval import stub, write_wds_classification
    from gaussianvision.apps.bench.progressive import _zeroshot
    from gaussianvision.eval.datasets import SplatCache, SplatSettings
    write_wds_classification(tmp_path / "colors")
    source = SplatCache(None, SplatSettings(n_gaussians=4, iters=3, init="grid", size=16))
    t = {"dataset": "wds/colors", "root": str(tmp_path / "colors")}
    assert _zeroshot(stub("gs"), t, source, 5) == 0.5
