"""The job page (GET /ui, issue 26 item 11): served from the package with no CDN, the API key
entered once and never in a URL; in headless chromium it lists the jobs with ASR/CA before and
after and shows a job's verdict, events and report link."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.helpers import finish_with_sample_report
from tests.service.test_api import REPO, dataset_id, job_body

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = REPO / "tests" / "artifacts"


def test_the_page_is_self_contained_and_holds_no_key(api):
    r = api.get("/ui", headers={"Authorization": ""})  # the page itself needs no key
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert not re.search(r"(src|href)=\"https?://", html), "no CDN or remote asset"
    assert "sessionStorage" in html and "Authorization" in html
    assert "localStorage" not in html  # the key lives in the tab only
    assert "/ui" not in api.get("/openapi.json").json()["paths"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Browser:
    """Headless chromium driven over the DevTools protocol (websockets, no extra package)."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        await self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    async def js(self, expr: str) -> Any:
        res = await self.call(
            "Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True
        )
        return res["result"].get("value")

    async def until(self, expr: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expr)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {expr}")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make test-browser installs it)")
def test_the_job_page_in_a_real_browser(api, assets, tmp_path):
    from app.main import create_app

    ds = dataset_id(api, assets)
    jid = api.post("/v1/jobs", json=job_body(ds, policy={"max_asr": 0.05})).json()["id"]
    report = finish_with_sample_report(jid)
    key = api.key_a
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    want_asr = (
        f"{100 * before['attack_success_rate']:.1f}% → {100 * after['attack_success_rate']:.1f}%"
    )

    async def drive(base: str, port: int) -> dict[str, Any]:
        import websockets

        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        target = next(p for p in pages if p["type"] == "page")
        async with websockets.connect(target["webSocketDebuggerUrl"], max_size=2**26) as ws:
            b = Browser(ws)
            await b.call("Page.enable")
            await b.call("Page.navigate", url=base + "/ui")
            await b.until("!!document.getElementById('key')")
            await b.js(f"document.getElementById('key').value = {json.dumps(key)};"
                       "document.getElementById('go').click(); true")  # fmt: skip
            asr = await b.until(
                f"document.querySelector('tr[data-job=\"{jid}\"] .asr')?.textContent"
            )
            list_shot = await b.call("Page.captureScreenshot", format="png")
            await b.js(f"location.hash = '#/jobs/{jid}'; true")
            verdict = await b.until("document.getElementById('verdict')?.textContent")
            events = await b.until("document.querySelectorAll('#events tr').length")
            job_shot = await b.call("Page.captureScreenshot", format="png")
            return {
                "asr": asr,
                "verdict": verdict,
                "events": events,
                "href": await b.js("location.href"),
                "stored": await b.js(
                    f"sessionStorage.getItem('sanitizer_api_key') === {json.dumps(key)}"
                ),
                "report_button": await b.js("!!document.getElementById('report')"),
                "shots": [list_shot["data"], job_shot["data"]],
            }

    import base64

    with _serve(create_app()) as base:
        port = _free_port()
        profile = tempfile.mkdtemp(prefix="chromium-")
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
             f"--user-data-dir={profile}", "--no-first-run", "--window-size=1200,800", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/json/version", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "chromium did not start"
                    time.sleep(0.2)
            seen = asyncio.run(drive(base, port))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(profile, ignore_errors=True)
    SHOTS.mkdir(exist_ok=True)
    for name, data in zip(("ui-jobs.png", "ui-job.png"), seen["shots"], strict=True):
        (SHOTS / name).write_bytes(base64.b64decode(data))
        assert (SHOTS / name).stat().st_size > 5_000
    assert seen["asr"] == want_asr
    assert "PASSED the release policy" in seen["verdict"]
    assert seen["events"] >= 2 and seen["report_button"] and seen["stored"] is True
    assert key not in seen["href"]
