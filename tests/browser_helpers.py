"""Open an HTML report in headless Chromium (system ``chromium`` driven by Playwright) and read what a reader sees.

``open_report`` loads a report from its file, blocks every request that is neither a ``data:`` URI nor
the report itself, and returns a :class:`PageCheck`: console errors, uncaught exceptions, refused
requests, every image's decoded size, the tables per section and, when a phone viewport was asked
for, every element that sticks out of it without a horizontally scrollable container around it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: the phone the reports must stay readable on: CSS pixels, as a 375 px wide phone reports them
PHONE = {"width": 375, "height": 812}
CHROMIUM_MISSING = "chromium not found: apt-get install chromium (or set IDLS_CHROMIUM to its path)"

#: per section (its <h2> text): the tables that follow it up to the next <h2>, each as its header cells and
#: row count, and the <details> blocks with their summary line, whether open, and how many tables they hold
_SECTIONS_JS = """() => {
  const sections = {};
  let current = null;
  for (const el of document.body.querySelectorAll('h2, table, details')) {
    if (el.tagName === 'H2') { current = {tables: [], details: []}; sections[el.textContent.trim()] = current; continue; }
    if (current === null) continue;
    if (el.tagName === 'TABLE') {
      current.tables.push({head: Array.from(el.querySelectorAll('thead th')).map(th => th.textContent.trim()),
                           rows: el.querySelectorAll('tbody tr').length,
                           inDetails: el.closest('details') !== null});
    } else {
      current.details.push({summary: el.querySelector('summary').textContent.trim(), open: el.open,
                            tables: el.querySelectorAll('table').length});
    }
  }
  return sections;
}"""

#: the outermost elements whose box ends right of the viewport with no horizontally scrollable ancestor inside it
_OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const contained = el => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (scrolls(a)) return a.getBoundingClientRect().right <= width + 0.5;
    }
    return false;
  };
  const sticksOut = el => el.getBoundingClientRect().right > width + 0.5 && !contained(el);
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (sticksOut(el) && !(el.parentElement !== document.body && sticksOut(el.parentElement))) {  // outermost only
      const box = el.getBoundingClientRect();
      out.push(`<${el.tagName.toLowerCase()}> ${Math.round(box.width)} px wide, right edge at ${Math.round(box.right)}`);
    }
  }
  return {width: width, scrollWidth: document.documentElement.scrollWidth, offenders: out.slice(0, 10)};
}"""

_IMAGES_JS = """() => Array.from(document.images).map(img => ({
  alt: img.alt, complete: img.complete, natural: img.naturalWidth, shown: img.getBoundingClientRect().width}))"""


@dataclass
class PageCheck:
    """What one page load showed. ``layout`` is filled only for a phone-width load."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    refused_requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    sections: dict[str, dict] = field(default_factory=dict)
    layout: dict | None = None

    def assert_clean(self) -> None:
        """Every image decoded, nothing logged as an error, nothing fetched from outside the file."""
        assert self.images, "the report has no <img>"
        broken = [img["alt"] for img in self.images if not (img["complete"] and img["natural"] > 0)]
        assert not broken, f"images that did not load: {broken}"
        assert not self.console_errors, f"console errors: {self.console_errors}"
        assert not self.page_errors, f"uncaught exceptions: {self.page_errors}"
        assert not self.refused_requests, f"requests leaving the report: {self.refused_requests}"

    def assert_fits_phone(self) -> None:
        """No horizontal page scroll; what is wider than the screen scrolls inside its own container."""
        assert self.layout is not None, "load the page with phone=True"
        assert self.layout["width"] == PHONE["width"], (
            f"layout viewport {self.layout['width']} px on a {PHONE['width']} px phone: missing <meta name=viewport>?")
        assert not self.layout["offenders"], f"wider than the phone's screen: {self.layout['offenders']}"
        assert self.layout["scrollWidth"] <= self.layout["width"], f"the page scrolls sideways: {self.layout}"
        too_wide = [img for img in self.images if img["shown"] > PHONE["width"]]
        assert not too_wide, f"figures not scaled to the screen: {too_wide}"


def chromium_executable() -> str:
    """The system Chromium (``IDLS_CHROMIUM`` overrides); skips the test when there is none."""
    path = os.environ.get("IDLS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip(CHROMIUM_MISSING)
    return path


def launch_browser(playwright):
    """Headless Chromium from the system package (Playwright downloads no browser of its own here)."""
    return playwright.chromium.launch(executable_path=chromium_executable(), headless=True)


def open_report(browser, path: Path, *, phone: bool = False, timeout_ms: int = 30_000) -> PageCheck:
    """Load ``path`` (desktop 1280 px, or the :data:`PHONE` viewport emulated as a touch phone) and check it."""
    url = Path(path).resolve().as_uri()
    check = PageCheck()
    options = {"viewport": PHONE, "is_mobile": True, "has_touch": True, "device_scale_factor": 2} if phone else {
        "viewport": {"width": 1280, "height": 900}}
    context = browser.new_context(**options)
    try:
        page = context.new_page()
        page.on("console", lambda msg: check.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda error: check.page_errors.append(str(error)))

        def route(request_route):
            request_url = request_route.request.url
            if request_url == url or request_url.startswith("data:"):
                request_route.continue_()
            else:
                check.refused_requests.append(request_url)
                request_route.abort()

        page.route("**/*", route)
        page.goto(url, wait_until="load", timeout=timeout_ms)
        page.wait_for_load_state("networkidle", timeout=timeout_ms)
        check.images = page.evaluate(_IMAGES_JS)
        check.sections = page.evaluate(_SECTIONS_JS)
        if phone:  # with every collapsible block opened, as a reader may
            page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
            check.layout = page.evaluate(_OVERFLOW_JS)
    finally:
        context.close()
    return check
