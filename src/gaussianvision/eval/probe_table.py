"""The probe's table (attribute x layer -> held-out accuracy), its reading, and its files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..atomic import write_text_atomic

__all__ = ["probe_markdown", "diagnose", "write_probe"]


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else None


def probe_markdown(result: dict) -> str:
    """Rows: attributes (and their mean); columns: chance, then each model's layers."""
    cols = result["columns"]
    head = ["attribute", "classes", "train / test", "chance", *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = result["rows"]
    for r in rows:
        accs = [r["layers"].get(c, {}).get("acc") for c in cols]
        lines.append("| " + " | ".join([r["attribute"], str(r["classes"]), f"{r['n_train']} / {r['n_test']}",
                                          _pct(r["chance"]), *map(_pct, accs)]) + " |")
    if len(rows) > 1:
        means = [_mean([r["layers"].get(c, {}).get("acc") for r in rows]) for c in cols]
        lines.append("| " + " | ".join(["mean", "", "", _pct(_mean([r["chance"] for r in rows])),
                                          *map(_pct, means)]) + " |")
    return "\n".join(lines) + "\n"


TOO_FEW = 0.5  # a drop must pass 2 / n_test (the significance rule's floor): from 50 points, nothing is told apart


def _significant(a: dict, b: dict) -> bool:
    """Whether two held-out accuracies differ by more than two standard errors of the difference."""
    se = math.sqrt(a["stderr"] ** 2 + b["stderr"] ** 2)
    return abs(a["acc"] - b["acc"]) > 2 * max(se, 1.0 / max(a["n_test"], 1))


def _gs_line(attr: str, label: str, layers: dict, rgb: dict | None) -> str:
    names = [c for c in layers if c.startswith(label + " ")]
    chain = " -> ".join(f"{c[len(label) + 1:]} {_pct(layers[c]['acc'])}" for c in names)
    text = f"{attr}: {label}: {chain}"
    if rgb is not None:
        text += f"; {rgb['name']} {_pct(rgb['acc'])}"
    steps = [(layers[a]["acc"] - layers[b]["acc"], a, b) for a, b in zip(names, names[1:])]
    if steps:
        drop, a, b = max(steps)
        n_test = layers[names[0]]["n_test"]
        if drop > 0 and _significant(layers[a], layers[b]):
            text += f". Lost between {a[len(label) + 1:]} and {b[len(label) + 1:]} ({100 * drop:.0f} points)"
        elif 2.0 / max(n_test, 1) >= TOO_FEW:  # regression (new-user trial): 1 held-out image read as no drop
            text += (f". Too few held-out images ({n_test}) to tell a drop (only one over {200 / max(n_test, 1):.0f} "
                     "points would count); give more images, or more of them with --max-images")
        else:
            text += ". No significant drop inside the tower"
    if rgb is not None and names:
        last = layers[names[-1]]
        if rgb["acc"] > last["acc"] and _significant(rgb, last):
            text += f"; {100 * (rgb['acc'] - last['acc']):.0f} points below the RGB tower"
    return text + "."


def diagnose(result: dict) -> list[str]:
    """One line per attribute and GS model: accuracy along the tower's layers, the largest
    significant drop between consecutive layers, and the gap to the first RGB model's embedding."""
    kinds = result["models"]
    rgb_label = next((m for m, k in kinds.items() if k == "rgb"), None)
    out = []
    for r in result["rows"]:
        if not r["n_test"] or not r["n_train"]:  # regression: NaN accuracies read as "no significant drop"
            out.append(f"{r['attribute']}: nothing to read: {r['n_train']} training and {r['n_test']} held-out images "
                       f"(too few per class; give more images, or more of them with --max-images)")
            continue
        ref = r["layers"].get(f"{rgb_label} embedding") if rgb_label else None
        rgb = dict(ref, name=f"{rgb_label} embedding") if ref else None
        out += [_gs_line(r["attribute"], m, r["layers"], rgb) for m, k in kinds.items() if k == "gs"]
    return out


def _clean(o):
    """NaN (an empty held-out split) -> None, so the JSON is standard."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    return o


def write_probe(out_dir: str | os.PathLike, result: dict, command: str | None = None) -> dict:
    """OUT/probe.json (the result, the table, the diagnosis) and OUT/probe.md; returns the paths
    and the Markdown table."""
    out = Path(out_dir)
    table = probe_markdown(result)
    lines = diagnose(result)
    md = ["# Linear probes per attribute and layer", ""]
    if command:
        md += ["```", command, "```", ""]
    md += ["Held-out accuracy of a multinomial logistic regression per attribute (row) on each layer's",
           "features (column); the same stratified train / test split for every column.", "", table]
    md += ["## Reading", ""] + [f"- {ln}" for ln in lines] + [""]
    skipped = sorted({s for r in result["rows"] for s in r["skipped"]})
    if skipped:
        md += ["## Skipped layers", ""] + [f"- {s}" for s in skipped] + [""]
    doc = _clean(dict(result, table=table, diagnosis=lines, command=command))
    write_text_atomic(out / "probe.json", json.dumps(doc, indent=2) + "\n", mkdir=True)
    write_text_atomic(out / "probe.md", "\n".join(md))
    return {"json": str(out / "probe.json"), "markdown": str(out / "probe.md"), "table": table, "diagnosis": lines}
