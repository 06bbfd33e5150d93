"""The HTML report in a real browser (Debian's headless chromium): it renders, the plots
decode, and the numbers the browser shows are the JSON report's."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_report_html import _lookup, parse  # same folder (pytest prepends it)

from sanitizer.report_html import Policy, format_value, render_report_html

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
# Appended by the test only (the report itself has no scripts): after load, record the
# decoded size of every image and whether any resource was fetched from the network.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => [i.naturalWidth, i.naturalHeight]);
  const remote = performance.getEntriesByType('resource').map(r => r.name)
    .filter(n => !n.startsWith('data:') && !n.startsWith('file:'));
  document.body.setAttribute('data-probe', JSON.stringify({imgs, remote}));
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )


def test_browser_renders_numbers_of_the_json(report: dict[str, Any], tmp_path: Path) -> None:
    html = render_report_html(report, policy=Policy(max_asr=0.05, max_ca_drop=0.02))
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    out = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    dom = out.stdout
    assert "<main>" in dom, out.stderr[-2000:]

    nums = parse(dom).items
    assert len(nums) > 30
    for key, raw, text in nums:
        if key.startswith("policy."):
            continue
        value = _lookup(report, key)
        assert json.loads(raw) == value, key
        assert text == format_value(value, key), (key, text)
    shown = {k: t for k, _, t in nums}
    assert shown["metrics.before.attack_success_rate"] == "98.7%"
    assert shown["metrics.after.attack_success_rate"] == "2.3%"
    assert shown["metrics.after.clean_accuracy"] == "87.2%"
    assert 'data-passed="true"' in dom

    probe = json.loads(
        __import__("html").unescape(dom.split('data-probe="', 1)[1].split('"', 1)[0])
    )
    assert len(probe["imgs"]) == 3
    assert all(w > 300 and h > 100 for w, h in probe["imgs"]), probe  # the PNGs decoded
    assert probe["remote"] == []


def test_browser_screenshot(report: dict[str, Any], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_report_html(report, policy=Policy(max_asr=0.05, max_ca_drop=0.01)))
    shot = tmp_path / "report.png"
    out = _chromium(tmp_path, "--window-size=1100,1600", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), out.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 1600)
    assert len(data) > 50_000  # a real page with plots, not a blank one
    keep = os.environ.get("REPORT_SCREENSHOT")
    if keep:  # REPORT_SCREENSHOT=/tmp/report.png to look at it
        shutil.copy(shot, keep)
