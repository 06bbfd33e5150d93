"""sanitizer.report_html: numbers on the page are the JSON's, the page is self-contained."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from typing import Any

import pytest

from sanitizer.report_html import Policy, check_policy, format_value, render_report_html


class _Numbers(HTMLParser):
    """Collect (data-key, data-value, text) of every number span."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[str, str, str]] = []
        self._open: list[tuple[str, str] | None] = []
        self._text: list[str] = []
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src") or "")
        if tag == "span" and "data-value" in a:
            self._open.append((a["data-key"] or "", a["data-value"] or ""))
            self._text = []

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open:
            key, value = self._open.pop()
            self.items.append((key, value, "".join(self._text)))


def _lookup(report: dict[str, Any], key: str) -> Any:
    node: Any = report
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def parse(html: str) -> _Numbers:
    p = _Numbers()
    p.feed(html)
    return p


def test_every_number_matches_the_json(report: dict[str, Any]) -> None:
    html = render_report_html(report, policy=Policy(max_asr=0.05, max_ca_drop=0.02))
    nums = parse(html).items
    keys = {k for k, _, _ in nums}
    # the headline numbers are all there
    for k in (
        "metrics.before.attack_success_rate",
        "metrics.after.attack_success_rate",
        "metrics.before.clean_accuracy",
        "metrics.after.clean_accuracy",
        "metrics.der",
        "baseline.metrics.after.attack_success_rate",
        "metrics.per_attack.insertsent.after.attack_success_rate",
        "timings.defense_s",
        "config.learning_rate",
        "datasets.clean.rows",
    ):
        assert k in keys, k
    checked = 0
    for key, raw, text in nums:
        if key.startswith("policy."):
            continue
        value = _lookup(report, key)
        assert json.loads(raw) == value, key  # exact raw value
        assert text == format_value(value, key), key  # shown with the one format rule
        checked += 1
    assert checked > 30


def test_formatting_rules() -> None:
    assert format_value(0.023333333333333334, "metrics.after.attack_success_rate") == "2.3%"
    assert format_value(0.98, "der") == "98.0%"
    assert format_value(30.05, "timings.defense_s") == "30.05 s"
    assert format_value(600, "n_clean") == "600"
    assert format_value(0.0002, "config.learning_rate") == "0.0002"
    assert format_value(None) == "–"


def test_self_contained_no_network(report: dict[str, Any]) -> None:
    html = render_report_html(report)
    p = parse(html)
    assert len(p.srcs) == 3  # metrics, losses, per-attack
    assert all(s.startswith("data:image/png;base64,") for s in p.srcs)
    assert p.links == []
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "@import" not in html and "url(" not in html


def test_tolerates_missing_keys() -> None:
    html = render_report_html({})
    assert html.startswith("<!DOCTYPE html>")
    minimal = {"method": "crow", "metrics": {"before": {"clean_accuracy": 0.9}}}
    html = render_report_html(minimal)
    assert 'data-key="metrics.before.clean_accuracy" data-value="0.9">90.0%' in html
    assert "<img" in html  # the before-only bar still plots


def test_generation_report_without_attack(report: dict[str, Any]) -> None:
    gen = copy.deepcopy(report)
    gen["task"] = "generation"
    gen["metrics"] = {
        "before": {
            "utility_token_f1": 0.41,
            "reference_perplexity": 12.5,
            "n_clean": 50,
            "samples": [{"prompt": "<script>alert(1)</script>", "response": "ok"}],
        },
        "after": {"utility_token_f1": 0.40, "reference_perplexity": 13.1, "n_clean": 50},
    }
    html = render_report_html(gen, policy=Policy(max_asr=0.05))
    assert "<script>alert(1)" not in html  # escaped
    assert "&lt;script&gt;alert(1)" in html
    assert 'data-passed="false"' in html  # no ASR to check: the gate fails closed
    assert "cannot be checked" in html


def test_policy_verdicts(report: dict[str, Any]) -> None:
    # CA 0.8833 -> 0.8717 is a 1.17-point drop
    assert check_policy(report, Policy(max_asr=0.05, max_ca_drop=0.02)).passed
    v = check_policy(report, Policy(max_asr=0.05, max_ca_drop=0.01))
    assert not v.passed and "dropped by 1.2 points" in v.reasons[0]
    v = check_policy(report, Policy(max_asr=0.01))
    assert not v.passed and "2.3%" in v.reasons[0]
    # float noise: 0.88 - 0.87 = 0.010000000000000009 must pass a 0.01 limit
    r = {"metrics": {"before": {"clean_accuracy": 0.88}, "after": {"clean_accuracy": 0.87}}}
    assert check_policy(r, Policy(max_ca_drop=0.01)).passed


def test_verdict_banner(report: dict[str, Any]) -> None:
    assert 'data-passed="true"' in render_report_html(report, policy=Policy(max_asr=0.05))
    html = render_report_html(report, policy=Policy(max_asr=0.01))
    assert 'data-passed="false"' in html and "FAILED" in html
    assert 'id="verdict"' not in render_report_html(report)


def test_embedded_json_cannot_break_out(report: dict[str, Any]) -> None:
    r = copy.deepcopy(report)
    r["config"]["note"] = "</script><script>alert(1)</script>"
    html = render_report_html(r)
    assert html.count("<script") == 1  # only the JSON data island
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m and json.loads(m.group(1))["config"]["note"] == r["config"]["note"]


def test_module_is_torch_free() -> None:
    code = (
        "import sys, json; from sanitizer.report_html import render_report_html;"
        "import sanitizer.report_json;"
        "render_report_html({'metrics': {'before': {'clean_accuracy': 0.5}}});"
        "print(json.dumps(['torch' in sys.modules, 'matplotlib.pyplot' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, False]


@pytest.mark.parametrize(
    "per_attack",
    [
        {"badnet": {"asr_before": 0.9, "asr_after": 0.1}},
        [
            {
                "attack": "badnet",
                "before": {"attack_success_rate": 0.9},
                "after": {"attack_success_rate": 0.1},
            }
        ],
    ],
)
def test_per_attack_shapes(report: dict[str, Any], per_attack: Any) -> None:
    r = copy.deepcopy(report)
    r["metrics"]["per_attack"] = per_attack
    nums = parse(render_report_html(r)).items
    shown = [(k, json.loads(v)) for k, v, _ in nums if k.startswith("metrics.per_attack")]
    assert sorted(v for _, v in shown) == [0.1, 0.9]
    for k, v in shown:
        assert _lookup(r, k) == v


def test_measurement_warnings_are_shown(report):
    import copy

    r = copy.deepcopy(report)
    r["metrics"]["warnings"] = ["before the defense the model gives one label for 100% <of> rows"]
    html = render_report_html(r)
    assert 'id="warnings"' in html and "100% &lt;of&gt; rows" in html
    assert 'id="warnings"' not in render_report_html(report)


def test_base_identification_section_names_the_base_and_escapes_the_candidates(
    report: dict[str, Any],
) -> None:
    r = copy.deepcopy(report)
    r["method_requested"], r["method_reason"] = "auto", "auto: the full weights were fine-tuned..."
    r["base_identification"] = {
        "identified": "org/base",
        "candidates": [
            {
                "model_id": "org/base",
                "embedding_distance": 0.0,
                "distance": 0.0312,
                "reason": "token embeddings within 0.3",
            },
            {
                "model_id": "<b>evil</b>",
                "embedding_distance": None,
                "distance": None,
                "reason": "differs in hidden_size",
            },
        ],
    }
    html = render_report_html(r)
    section = html[html.index('id="base-identification"') :]
    assert "fine-tuned from <b>org/base</b>" in section
    assert "0.0312" in section and "&lt;b&gt;evil&lt;/b&gt;" in section
    assert "<b>evil</b>" not in html
    assert "auto: the full weights were fine-tuned" in html  # the run says why
    assert 'id="base-identification"' not in render_report_html(report)
