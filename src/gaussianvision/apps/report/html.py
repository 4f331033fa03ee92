"""A small static HTML report: headings, paragraphs, tables and PNG figures, written atomically.

The page carries a tiny script that, once loaded, counts the figures that decoded
(`naturalWidth > 0`) and writes "loaded/total" into <body data-figures="...">, so a headless
browser can prove that every figure loads (see browser.py).
"""
from __future__ import annotations

import html
import os
from pathlib import Path

from gaussianvision.atomic import write_text_atomic

__all__ = ["Report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; max-width: 520px; }
.note { color: #555; font-size: 0.9em; }
"""

_CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img');
  var ok = 0;
  imgs.forEach(function (im) { if (im.complete && im.naturalWidth > 0) ok += 1; });
  document.body.setAttribute('data-figures', ok + '/' + imgs.length);
});
</script>
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


class Report:
    """Collects parts in order; `write()` produces DIR/index.html (figures must live under DIR)."""

    def __init__(self, out_dir: str | os.PathLike, title: str):
        self.out_dir = Path(out_dir)
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, rows: list[dict], columns: list[str] | None = None) -> None:
        if not rows:
            self.parts.append('<p class="note">(no rows)</p>')
            return
        cols = columns or list(rows[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, path: str | os.PathLike, caption: str = "", width: int | None = None) -> None:
        p = Path(path)
        rel = os.path.relpath(p.resolve(), self.out_dir.resolve())
        if rel.startswith(".."):
            raise ValueError(f"figure {p} is outside the report folder {self.out_dir}")
        if not p.exists():
            raise FileNotFoundError(f"figure {p} does not exist")
        w = f' width="{int(width)}"' if width else ""
        self.parts.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}"{w}>'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self, name: str = "index.html") -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body data-figures='pending'><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.parts) + _CHECK + "</body></html>")
        path = self.out_dir / name
        write_text_atomic(path, page, encoding="utf-8")
        return path
