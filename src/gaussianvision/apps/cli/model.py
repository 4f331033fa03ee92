"""gsv model info CONFIG: parameter counts of a GS-CLIP model (total, trainable, by part)."""
from __future__ import annotations

from gaussianvision.apps.cli.command import ArgumentParser, CliError, HelpFormatter, emit, run


def describe(config: str, base: str | None) -> dict:
    from gaussianvision.models import (WeightsError, ConfigError, create_gsclip, parameter_report,
                                       read_weights_config)
    try:
        if config.endswith(".safetensors"):
            stored = read_weights_config(config)["config"]
            cfg, base = stored["gs"], base or stored["base"]
        else:
            cfg = config
        # shapes only: counting needs no weights, and the meta device allocates nothing
        model = create_gsclip(base, None, cfg, device="meta")
    except (ConfigError, WeightsError) as e:
        raise CliError(str(e)) from None
    rep = parameter_report(model)
    rep["config"] = model.gs_config
    rep["base"] = model.base_name
    return rep


def table(rep: dict) -> str:
    lines = [f"GS-CLIP {rep['config']['name']} on {rep['base']}: "
             f"{rep['config']['resampler']['num_latents']} tokens", ""]
    lines.append(f"{'part':<24}{'params':>14}{'trainable':>14}")
    for name, d in rep["parts"].items():
        lines.append(f"{name:<24}{d['params']:>14,}{d['trainable']:>14,}")
    lines.append(f"{'total':<24}{rep['total']:>14,}{rep['trainable']:>14,}")
    lines.append("")
    lines.append(f"trainable fraction: {100 * rep['trainable_fraction']:.2f}% of all parameters "
                 f"(base + GS modules); {100 * rep['trainable_fraction_of_base']:.2f}% of the base alone")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = ArgumentParser(prog="gsv model", description="GS-CLIP model information.", formatter_class=HelpFormatter,
                       epilog="example:\n  gsv model info gs-196 --json")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = sub.add_parser("info", help="parameter table: total, trainable, by part", formatter_class=HelpFormatter,
                          description="Parameter table of a GS-CLIP model (total, trainable, by part); "
                                      "shapes only: no weights are loaded, nothing is downloaded.")
    info.add_argument("config", help="shipped config name (gs-196, gs-98, gs-tiny), JSON path or .safetensors checkpoint")
    info.add_argument("--base", default=None, help="OpenCLIP base (default: the config's)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    args = p.parse_args(argv)

    def go(a):
        rep = describe(a.config, a.base)
        emit(rep, a.json, table(rep))
    return run("model", go, args)
