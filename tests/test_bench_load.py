"""gsv bench load: every loader is warmed up before it is timed, and the table says what is timed."""
from types import SimpleNamespace

from gaussianvision.apps.bench import load


def test_the_first_pass_of_every_loader_is_not_timed(monkeypatch):
    """Regression (new-user trial): --quick timed a single pass, so the JPEG side paid 3.6 s of one-time
    warm-up (the loader imports open_clip) and the splats' speed-up read 78x instead of 14x. A fake clock:
    the first pass of the loader costs 100 s, every later one 1 s."""
    now, passes = [0.0], []
    monkeypatch.setattr(load, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def make():
        passes.append(1)
        now[0] += 100.0 if len(passes) == 1 else 1.0
        return [{"key": ["a", "b"]}, {"key": ["c"]}]
    assert load.time_loader(make, repeats=1) == (1.0, 3)
    assert len(passes) == 2
    passes.clear()
    assert load.time_loader(make, repeats=2) == (1.0, 3) and len(passes) == 3


def test_the_table_says_what_is_timed(tmp_path):
    res = load.run_load_bench(tmp_path, n_samples=8, per_shard=8, batch_size=8, workers=(0,), n_gaussians=(16,),
                              repeats=1, jpeg_sides=(64,), log=lambda m: None)
    assert res["repeats"] == 1 and "untimed warm-up pass" in res["timed"]
    assert f"Timed: {res['timed']}." in load.markdown(res) and "best of 1 timed" in res["timed"]
