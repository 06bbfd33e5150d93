"""scan on tiny models built in code: flags the poisoned adapter with its target, not the clean
twin (the same base, no adapter); the attack spec is never given to it."""

from __future__ import annotations

import pytest

from sanitizer.models import attach_adapter, load_model
from sanitizer.scan import ScanConfig, insert_text, scan_classifier
from tests.core.test_defense_behaviour import _data
from tests.core.test_rebuild import poisoned_adapter  # noqa: F401  (the shared fixture)


@pytest.mark.timeout(600)
def test_scan_flags_the_poisoned_adapter_and_names_its_target(poisoned_adapter):  # noqa: F811
    root, _, _ = poisoned_adapter
    clean, _, _ = _data()
    cfg = ScanConfig(trigger_len=2)
    lm = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    attach_adapter(lm, root / "adapter")
    found = scan_classifier(lm, clean[400:600], ["negative", "positive"], cfg)
    # measured 2026-12-05: top flip rate 0.97 -> negative (the planted target)
    assert found.verdict == "backdoor" and found.target_name == "negative", found
    twin = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    clean_scan = scan_classifier(twin, clean[400:600], ["negative", "positive"], cfg)
    # measured: 0.16 on the untrained base
    assert clean_scan.verdict == "clean" and clean_scan.score < 0.5, clean_scan


def test_insert_text_puts_the_trigger_between_words():
    import random

    out = insert_text("a b c", "zz", random.Random(0)).split()
    assert sorted(out) == ["a", "b", "c", "zz"] and len(out) == 4
