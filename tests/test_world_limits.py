"""The demo world's generator refuses settings it cannot draw, in one line, instead of looping for ever or
running out of memory (new-user trial: --cells 1 hung in the relation task's sampler; --size 100000 asked
numpy for 37 GiB). Every rejection loop is bounded; the guard below turns an unbounded loop of the code
before the fix into a failure instead of a hang."""
import numpy as np
import pytest

from gaussianvision.apps.demo.world import scenes, tasks, world
from gaussianvision.apps.demo.world.__main__ import main
from gaussianvision.apps.demo.world.tasks import Task
from gaussianvision.apps.demo.world.world import MAX_SIZE, check_layouts, make_world, resolve_params

ENDLESS = 50_000  # calls: far past any bound of the samplers (scenes.MAX_DRAWS = 2000)


def _guarded(fn):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > ENDLESS:
            raise AssertionError(f"{fn.__name__} called {ENDLESS} times: an unbounded loop")
        return fn(*args, **kwargs)
    return wrapped


@pytest.fixture(autouse=True)
def no_endless_draws(monkeypatch):
    """Every layout drawn by the tasks and the training scenes counts towards ENDLESS."""
    monkeypatch.setattr(tasks, "place_objects", _guarded(scenes.place_objects))
    monkeypatch.setattr(scenes, "place_objects", _guarded(scenes.place_objects))
    monkeypatch.setattr(scenes, "_choice", _guarded(scenes._choice))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _args(tmp_path, *extra):
    return ["--out", str(tmp_path / "w"), "--n-train", "0", "--n-test", "0", "--n-task", "1", "--workers", "1",
            *extra]


def test_one_cell_is_refused_in_one_line(tmp_path, capsys):
    assert main(_args(tmp_path, "--cells", "1")) == 2
    assert "cells must be 0 (free placement) or at least 2 cells" in _one_line(capsys)
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="at least 2 cells"):
        resolve_params(cells=1)


@pytest.mark.parametrize("size, cells", [(64, 3), (32, 2), (16, 4)])
def test_a_grid_without_room_for_a_task_is_refused_before_any_image(size, cells, tmp_path, monkeypatch):
    """Valid-looking grids on which the relation task's pair (and at 16 px the count task's four circles)
    never fit: a ValueError naming the task, before anything is drawn or written."""
    monkeypatch.setattr(world, "render_scene", lambda scene: pytest.fail("drew an image"))
    with pytest.raises(ValueError, match=rf"task's class .* does not fit {size}-pixel images with cells={cells}"):
        make_world(tmp_path / "w", n_train=4, n_test=0, n_task=4, size=size, cells=cells)
    assert not (tmp_path / "w").exists()


def test_the_cli_says_which_class_does_not_fit(tmp_path, capsys):
    assert main(_args(tmp_path, "--cells", "3")) == 2
    err = _one_line(capsys)
    assert "the relation task's class" in err and "64-pixel images with cells=3" in err


def test_a_grid_with_room_still_builds(tmp_path):
    """2 cells at 64 px fit every task (the trial's working setting) and the layout check passes."""
    check_layouts(resolve_params(n_train=2, n_test=0, n_task=4, cells=2))
    w = make_world(tmp_path / "w", n_train=2, n_test=0, n_task=4, cells=2, shard_size=10)
    assert w["tasks"]["relation"]["n"] == 4


def test_a_task_sampler_gives_up_after_max_draws():
    calls = []

    def never_fits(rng, size, label, cells):
        calls.append(1)
        assert len(calls) <= ENDLESS, "an unbounded loop"
    never = Task("never", ("a", "b"), ("{c}",), "never fits", never_fits)
    with pytest.raises(ValueError, match=r"the never task's class 'b' does not fit 64-pixel images with cells=8"):
        never.sample(np.random.default_rng(0), 64, 1, 8)
    assert len(calls) == scenes.MAX_DRAWS


def test_training_scenes_give_up_after_max_draws(monkeypatch):
    monkeypatch.setattr(scenes, "place_objects", _guarded(lambda *a, **k: None))
    with pytest.raises(ValueError, match="no training scene fits 64-pixel images with cells=8"):
        scenes.sample_scene(np.random.default_rng(0), 64, cells=8)


def test_a_holdout_of_every_pair_is_an_error_not_a_hang():
    every = [(c, s) for c in scenes.COLORS for s in scenes.SHAPES]
    with pytest.raises(ValueError, match="leaves too few"):
        scenes.sample_scene(np.random.default_rng(0), 64, holdout=every)


def test_repeated_pixels_are_redrawn_a_bounded_number_of_times(monkeypatch):
    same = (b"png", None, {}, b"digest")
    monkeypatch.setattr(world, "_render_job", _guarded(lambda job: same))
    jobs = [("task", 0, "color", 0, 32, 0, 8, 0)]
    with pytest.raises(ValueError, match=f"task color sample 0: its pixels repeat .* in {world.MAX_REDRAWS} redraws"):
        list(world._produce(jobs, map, {b"digest"}, dedupe=True))


def test_size_has_an_upper_limit_named_in_the_error_and_the_help(tmp_path, capsys):
    assert MAX_SIZE == 1024
    resolve_params(size=MAX_SIZE)
    with pytest.raises(ValueError, match=f"size must be from 16 to {MAX_SIZE} pixels, got {MAX_SIZE + 1}"):
        resolve_params(size=MAX_SIZE + 1)
    assert main(["--out", str(tmp_path / "w"), "--n-train", "0", "--n-test", "0", "--n-task", "0",
                 "--size", "100000"]) == 2
    assert "size must be from 16 to 1024 pixels, got 100000" in _one_line(capsys)
    assert not (tmp_path / "w" / "manifest.json").exists()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "16 to 1024" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("flag", ["--workers", "--seed"])
def test_negative_workers_or_seed_is_one_line(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, flag, "-1"))  # the last --workers wins
    assert e.value.code == 2
    assert f"argument {flag}: must be >= 0, got -1" in _one_line(capsys)



def test_out_naming_a_file_or_under_one_is_one_line(tmp_path, capsys):
    f = tmp_path / "a.png"
    f.write_bytes(b"kept")
    assert main(_args(tmp_path, "--out", str(f))) == 2
    assert f"error: --out {f}: is not a folder (" in _one_line(capsys)
    assert main(_args(tmp_path, "--out", str(f / "w"))) == 2
    assert f"error: {f / 'w'}: Not a directory" in _one_line(capsys)
    assert f.read_bytes() == b"kept"


def test_empty_out_is_refused_not_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, "--out", ""))
    assert e.value.code == 2 and "argument --out: expected a path, got ''" in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []
