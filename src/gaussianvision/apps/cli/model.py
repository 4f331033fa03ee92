"""gsv model info CONFIG: parameter counts of a GS-CLIP model (total, trainable, by part)."""
from __future__ import annotations

from pathlib import Path

from gaussianvision.apps.cli.command import ArgumentParser, CliError, HelpFormatter, emit, run


def describe(config: str, base: str | None) -> dict:
    from gaussianvision.models import (WeightsError, ConfigError, create_gsclip, parameter_report,
                                       read_weights_config)
    if not config.strip():  # regression (new-user trial): '' read as the current folder, ': a folder, but not ...'
        raise CliError("give a config name, a JSON file, a .safetensors checkpoint or a `gsv train` output folder "
                       "(empty)")
    stored = None
    try:
        if config.endswith(".safetensors"):
            stored = read_weights_config(config)["config"]
            cfg, base = stored["gs"], base or stored["base"]
        elif Path(config).is_dir():  # a `gsv train` output folder, as eval / serve / probe take it
            cfg, stored_base = _trained_config(config)
            if base and base != stored_base:  # the shape its weights have, for the check below (review finding)
                stored = create_gsclip(stored_base, None, cfg, device="meta").config
            base = base or stored_base
        else:
            cfg = config
        # shapes only: counting needs no weights, and the meta device allocates nothing
        model = create_gsclip(base, None, cfg, device="meta")
    except (ConfigError, WeightsError) as e:
        raise CliError(str(e)) from None
    shape = {k: model.config[k] for k in ("width", "embed_dim")}
    if stored is not None and shape != {k: stored[k] for k in shape}:  # regression (new-user trial): described silently
        raise CliError(f"{config}: its weights were trained on {stored['base']} (width {stored['width']}, embedding "
                       f"{stored['embed_dim']}); --base {base} has width {shape['width']}, embedding "
                       f"{shape['embed_dim']}: they cannot load into it")
    rep = parameter_report(model)
    rep["config"] = model.gs_config
    rep["base"] = model.base_name
    return rep


def _trained_config(folder: str) -> tuple[dict, str]:
    """(GS config, base) of the latest checkpoint of a `gsv train` output folder (stages 1 and 2),
    from its state.json: no weights are read."""
    from gaussianvision.train.checkpoint import CheckpointError, latest_checkpoint, read_state
    step = latest_checkpoint(folder)
    if step is None:  # a folder holding a weights file: name it (regression (new-user trial): only 'no checkpoint')
        from gaussianvision.models.weights import weights_file_hint
        raise CliError(f"{folder}: a folder, but not a `gsv train` output folder (no checkpoint in it)"
                       f"{weights_file_hint(folder)}")
    try:
        task = read_state(step).get("task", {})
    except CheckpointError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{step / 'state.json'}: unreadable ({e})") from None
    if not isinstance(task, dict) or task.get("stage") not in ("1", "2"):
        raise CliError(f"{folder}: a stage {task.get('stage') if isinstance(task, dict) else None!r} checkpoint "
                       f"is not a GS model")
    if not isinstance(task.get("model_config"), dict) or not isinstance(task.get("base"), str):
        raise CliError(f"{step / 'state.json'}: no model_config and base recorded")
    return task["model_config"], task["base"]


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
    from gaussianvision.models.config import list_configs
    info.add_argument("config", help=f"shipped config name ({', '.join(list_configs())}), JSON path, .safetensors "
                                     "checkpoint or `gsv train` output folder")
    info.add_argument("--base", default=None, help="OpenCLIP base (default: the config's)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    args = p.parse_args(argv)

    def go(a):
        rep = describe(a.config, a.base)
        emit(rep, a.json, table(rep))
    return run("model", go, args)
