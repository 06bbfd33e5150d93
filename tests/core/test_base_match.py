"""sanitizer/base_match.py on tiny models built in code: a fine-tune is matched to the model it
came from, not to another model of the same architecture, nor to one of another shape."""

from __future__ import annotations

import math

import pytest
import torch

from sanitizer.base_match import identify_base, weight_distance
from sanitizer.tiny import build_tiny_model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    a = build_tiny_model(root, "tiny/a", "llama", hidden_size=32, num_layers=2, seed=0)
    b = build_tiny_model(root, "tiny/b", "llama", hidden_size=32, num_layers=2, seed=1)
    enc = build_tiny_model(root, "tiny/enc", "bert", hidden_size=32, num_layers=2, seed=0)
    return root, {"tiny/a": a, "tiny/b": b, "tiny/enc": enc}


def _vocab(folder) -> int:
    import json

    return json.loads((folder / "config.json").read_text())["vocab_size"]


def _fine_tune_of(folder, out, scale: float):
    """``folder``'s model with every weight moved by ``scale`` of its own norm (a stand-in for
    a fine-tune's small change), saved as safetensors to ``out``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn_like(p)
            p.add_(noise * (scale * p.norm() / noise.norm()))
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_a_fine_tune_is_matched_to_its_base_and_not_to_a_sibling(store, tmp_path):
    root, models = store
    upload = _fine_tune_of(models["tiny/a"], tmp_path / "upload", scale=0.02)
    dist, emb, cov = weight_distance(upload, models["tiny/a"], vocab_size=_vocab(upload))
    assert dist == pytest.approx(0.02, rel=0.05) and cov == pytest.approx(1.0)
    assert emb == pytest.approx(0.02, rel=0.05)
    found, checked = identify_base(upload, models.items())
    assert found == "tiny/a"
    by_id = {c.model_id: c for c in checked}
    # two models initialised apart: uncorrelated weights, distance near sqrt(2)
    assert by_id["tiny/b"].embedding_distance == pytest.approx(math.sqrt(2), abs=0.3)
    assert by_id["tiny/b"].distance is None  # no match: its other tensors were never read
    assert by_id["tiny/a"].distance == pytest.approx(0.02, rel=0.05)
    assert by_id["tiny/enc"].embedding_distance is None
    assert "model_type" in by_id["tiny/enc"].reason
    # a model moved further than a fine-tune moves one is not taken for its base
    far = _fine_tune_of(models["tiny/a"], tmp_path / "far", scale=0.6)
    assert identify_base(far, models.items())[0] is None
    # the upload itself, when it is in the store, is not its own base
    assert identify_base(models["tiny/a"], models.items())[0] is None


def test_a_classifier_is_matched_to_the_bare_encoder_it_wraps(store, tmp_path):
    """A sentence-transformers base is a bare encoder (``encoder.layer...``); the fine-tune is a
    classifier around it (``bert.encoder.layer...`` + a head): one wrapper prefix is allowed."""
    from transformers import AutoModelForSequenceClassification

    _root, models = store
    clf = AutoModelForSequenceClassification.from_pretrained(models["tiny/enc"])
    clf.bert.save_pretrained(tmp_path / "bare", safe_serialization=True)
    found, checked = identify_base(models["tiny/enc"], [("bare/enc", tmp_path / "bare")])
    assert found == "bare/enc", checked
    assert checked[0].embedding_distance == pytest.approx(0.0, abs=1e-9)
    assert checked[0].coverage >= 0.9
