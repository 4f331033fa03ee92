import pytest
import torch

from gaussianvision.data.images import save_png
from gaussianvision.apps.report import Report, check_in_browser, find_chromium


def test_report_html_and_errors(tmp_path):
    save_png(torch.rand(3, 8, 8), tmp_path / "a.png")
    r = Report(tmp_path, "T <1>")
    r.heading("Section")
    r.table([{"task": "shape", "top1": 0.5, "n": 1200}])
    r.figure(tmp_path / "a.png", "caption")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        r.figure(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="outside the report folder"):
        r.figure(tmp_path.parent / "x.png")
    page = r.write().read_text()
    assert "T &lt;1&gt;" in page and 'src="a.png"' in page and "<td>1,200</td>" in page


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (CI installs Debian's chromium)")
def test_every_figure_loads_in_headless_chromium(tmp_path):
    for k in range(3):
        save_png(torch.rand(3, 16, 16), tmp_path / f"f{k}.png")
    r = Report(tmp_path, "figures")
    for k in range(3):
        r.figure(tmp_path / f"f{k}.png", f"figure {k}")
    assert check_in_browser(r.write()) == (3, 3)
    # a broken figure is detected
    (tmp_path / "f2.png").write_bytes(b"not a png")
    assert check_in_browser(tmp_path / "index.html") == (2, 3)
