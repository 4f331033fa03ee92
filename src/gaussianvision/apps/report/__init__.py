"""HTML reports with PNG figures (used by `gsv demo`), and a headless-browser check."""
from gaussianvision.apps.report.html import Report
from gaussianvision.apps.report.browser import check_in_browser, find_chromium

__all__ = ["Report", "check_in_browser", "find_chromium"]
