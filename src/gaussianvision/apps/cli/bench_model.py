"""gsv bench model: GS tower vs RGB ViT, encode_image latency and FLOPs per image."""
from __future__ import annotations

import sys
from pathlib import Path

from gaussianvision.apps.cli.bench_args import name_list
from gaussianvision.apps.cli.command import (CliError, check_out_folder, emit, parser, path_arg, run, whole, whole_list,
                                             write_json, write_text)


def main(argv=None) -> int:
    p = parser("bench model", "Latency and FLOPs of the GS tower (98 tokens: per-layer vs shared keys/values) "
                              "vs the RGB ViT, side by side in one run.")
    p.add_argument("--out", type=path_arg, default=Path("benchmarks/results"), help="results directory")
    p.add_argument("--quick", action="store_true", help="batches 1 and 4, N=400 only, 2 repeats")
    p.add_argument("--base", default="ViT-B-16", help="OpenCLIP base architecture (default ViT-B-16)")
    p.add_argument("--configs", default="gs-98,gs-98-shared",
                   help="comma-separated GS configs (default gs-98,gs-98-shared: the old and the new design)")
    p.add_argument("--n", type=whole_list(1), default=None, help="Gaussians per image, comma-separated (default 400,900,1600,3136)")
    p.add_argument("--batch", type=whole_list(1), default=None, help="batch sizes, comma-separated (default 1,8)")
    p.add_argument("--repeats", type=whole(1), default=None, help="timed calls per point (default 3, quick 2)")
    p.add_argument("--large-batch-repeats", type=whole(1), default=1, help="timed calls for batches > 8 (default 1)")
    args = p.parse_args(argv)

    def go(a):
        from gaussianvision.apps.bench.model import DEFAULT_N, markdown_table, run_model_bench
        from gaussianvision.models import ConfigError
        configs = name_list(a.configs, "--configs")  # before --out is made
        check_out_folder(a.out)
        n = a.n if a.n is not None else ([400] if a.quick else list(DEFAULT_N))
        batches = a.batch if a.batch is not None else ([1, 4] if a.quick else [1, 8])
        repeats = a.repeats if a.repeats is not None else (2 if a.quick else 3)
        stem = "model_quick" if a.quick else "model"
        md = a.out / f"{stem}.md"

        def save(res, partial):
            res["env"]["quick"] = bool(a.quick)
            res["env"]["partial"] = partial
            write_json(a.out / f"{stem}.json", res)
            title = f"# gsv bench model ({'quick' if a.quick else 'full'}{', partial' if partial else ''})"
            write_text(md, f"{title}\n\n" + markdown_table(res))

        try:
            res = run_model_bench(a.base, configs, n, batches, repeats,
                                  progress=None if a.json else (lambda m: print(f"  {m}", file=sys.stderr)),
                                  large_batch_repeats=a.large_batch_repeats,
                                  on_row=lambda r: save(r, True))
        except ConfigError as e:
            raise CliError(str(e)) from None
        save(res, False)
        res["files"] = [str(a.out / f"{stem}.json"), str(md)]
        emit(res, a.json, markdown_table(res))
    return run("bench model", go, args)
