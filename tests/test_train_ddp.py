"""DDP: `gsv train` under torchrun with 2 CPU processes (gloo) equals 1 process with the global batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


pytest.importorskip("open_clip")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("negatives", [False, True], ids=["clip", "hard-negatives"])
def test_two_process_gloo_equals_single_process(tmp_path, negatives, read_log, write_splat_shards):
    from safetensors.torch import load_file
    data = tmp_path / "data"
    write_splat_shards(data, n_samples=8, per_shard=4, negatives=negatives)
    common = ["train", "--stage", "rgb", "--base", "gsv-tiny", "--data", str(data), "--in-memory", "--steps", "2",
              "--lr", "2e-3", "--grad-clip", "0", "--log-every", "1", "--device", "cpu", "--no-progress"]
    common += ["--hard-negatives"] if negatives else []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "gaussianvision.apps.cli.main", *common,
         "--batch-size", "2", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from gaussianvision.apps.cli.main import main
    assert main([*common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0

    ld, l1 = read_log(tmp_path / "ddp"), read_log(tmp_path / "one")
    assert len(ld) == len(l1) == 2
    for a, b in zip(ld, l1):  # the mean of the ranks' local losses is the global CLIP loss
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    st = (tmp_path / "ddp" / "checkpoints" / "step-00000002" / "state.json").read_text()
    assert '"world_size": 2' in st
    wd = load_file(str(tmp_path / "ddp" / "checkpoints" / "step-00000002" / "weights.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "step-00000002" / "weights.safetensors"))
    assert wd.keys() == w1.keys()
    checked = 0
    for n in w1:
        if n.endswith("in_proj_bias"):
            # its key third has a true gradient of 0 (softmax ignores a constant shift) and Adam
            # rescales float noise there to a full step, so only the query and value parts compare
            width = w1[n].shape[0] // 3
            a, b = wd[n].clone(), w1[n].clone()
            a[width:2 * width] = b[width:2 * width] = 0
        else:
            a, b = wd[n], w1[n]
        torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-5, msg=lambda m, n=n: f"{n}: {m}")
        checked += 1
    assert checked == len(w1) > 20


def _torchrun(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "gaussianvision.apps.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_count_skips_once_and_fall_back_to_the_same_checkpoint(tmp_path, read_log, write_splat_shards,
                                                                            write_multi_image_shard):
    """--in-memory: both ranks read every shard, yet each bad sample and damaged shard counts once.
    A fallback resume: rank 0 chooses, both ranks load that checkpoint, one warning, log kept."""
    import json
    data, out = tmp_path / "data", tmp_path / "out"
    paths = write_splat_shards(data, n_samples=16, per_shard=8)
    raw = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(raw[: len(raw) // 2])
    write_multi_image_shard(data / "shard-0002.tar")
    args = ["train", "--stage", "1", "--model-config", "gs-tiny", "--data", str(data), "--in-memory", "--steps", "4",
            "--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--save-every", "1", "--keep", "0",
            "--device", "cpu", "--no-progress", "--json", "--out", str(out)]
    first = _torchrun(args + ["--stop-after", "3"])
    assert first.returncode == 0, first.stdout[-1500:] + first.stderr[:4000]
    res = json.loads([ln for ln in first.stdout.splitlines() if ln.startswith("{")][-1])
    assert (res["steps"], res["skipped_samples"], res["damaged_shards"]) == (3, 2, 1)  # not 4 and 2
    logged = (out / "log.jsonl").read_text().splitlines(keepends=True)
    cut = out / "checkpoints" / "step-00000003" / "optimizer.safetensors"
    cut.write_bytes(cut.read_bytes()[:64])
    again = _torchrun(args + ["--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("warning: checkpoint unusable") == 1  # rank 0 only
    assert again.stderr.count("step-00000003 -> step-00000003.bad") == 1
    assert (out / "log.jsonl").read_text().splitlines(keepends=True)[:2] == logged[:2]
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    st = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert len(st["data_positions"]) == 2 and st["data_positions"][0] == st["data_positions"][1]
    # a checkpoint only rank 1 cannot use (its RNG state garbled): both ranks stop with the message, no hang
    f = out / "checkpoints" / "step-00000004" / "state.json"
    st["rng"][1]["torch"] = "AAAA"
    f.write_text(json.dumps(st))
    bad = _torchrun(args + ["--resume"], timeout=120)
    assert bad.returncode != 0
    assert "rank 1: --resume:" in bad.stderr and "unusable state" in bad.stderr
