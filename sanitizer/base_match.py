"""Which trusted model a full-weights upload was fine-tuned from, read off the weights.

A downloaded fine-tune (input (a)) comes without a base, but nearly every one descends from a
public pretrained model. The fingerprint of that descent is the token-embedding matrix: trained
row by row for one vocabulary, it is shared only by models that come from the same checkpoint,
and fine-tuning leaves it nearly as it was (a LoRA does not touch it; a full fine-tune moves it
a few percent), while two models trained apart have uncorrelated embeddings, at a relative
distance ``||E_upload - E_base|| / ||E_base||`` near sqrt(2). So the service compares an upload
with the models it holds (its own store, each pinned by hash; never the upload's word), and
when one's embeddings are within ``max_distance`` it is taken as the trusted base: ``auto`` then
rebuilds on it (docs/METHODS_NOTES.md). The distance over all shared matrices is reported
beside it: how far the fine-tune moved the rest (a merged LoRA on a pretrained model: under a
few percent; on a random tiny model, where the whole skill is in the delta, several times the
weights' own norm).

Safetensors only (nothing is unpickled); tensors are read one at a time, so the memory needed is
the largest tensor, not the model. Heads (a classifier, an LM head) are compared only where the
names and shapes agree; the shared matrices must hold ``min_coverage`` of the candidate's
matrix elements.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# the config fields that must agree before any tensor is read
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


@dataclass(frozen=True)
class BaseCandidate:
    model_id: str
    # None: not comparable (other architecture or too few shared tensors)
    embedding_distance: float | None  # the token embeddings: the decision
    distance: float | None  # every shared matrix: how far the fine-tune went (a match only)
    coverage: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def _tensors(stack: ExitStack, folder: Path) -> dict[str, Any]:
    """name -> open safetensors handle holding it: floating-point matrices only. Vectors (norm
    scales, biases) are left out: every model starts them at the same ones and zeros, so they
    would make two models trained apart look alike."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for f in _weight_files(folder):
        handle = stack.enter_context(safe_open(str(f), framework="pt"))
        for name in handle.keys():
            t = handle.get_slice(name)
            if t.get_dtype() in ("F32", "F16", "BF16", "F64") and len(t.get_shape()) >= 2:
                out[name] = handle
    return out


def _without_first(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else name


def _pairs(upload: dict[str, Any], base: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(upload name, base name) of the tensors both have, allowing one wrapper prefix on either
    side (``mpnet.encoder...`` in a classifier, ``encoder...`` in the bare model)."""
    index = {n: n for n in base}
    for n in base:
        index.setdefault(_without_first(n), n)
    seen = set()
    for n in upload:
        b = index.get(n) or index.get(_without_first(n))
        if b is not None and b not in seen:
            seen.add(b)
            yield n, b


def _is_embedding(shape: list[int], vocab_size: int | None) -> bool:
    """A vocabulary-aligned matrix: the token embeddings (``embed_tokens``, ``word_embeddings``,
    ``wte``...) and an untied LM head, one trained row per token either way."""
    return bool(vocab_size) and len(shape) == 2 and shape[0] == vocab_size


def weight_distance(
    upload_dir: Path,
    base_dir: Path,
    vocab_size: int | None = None,
    embeddings_only: bool = False,
) -> tuple[float, float, float]:
    """(relative distance, token-embedding distance, coverage): ``||W_u - W_b|| / ||W_b||``
    over the matrices both folders hold with the same shape, the same over the token
    embeddings (the matrices of ``vocab_size`` rows; inf when there are none),
    and the share of the base's matrix elements compared. ``embeddings_only`` reads no other
    tensor's data (the first distance is then nan; coverage still counts every shared shape)."""
    import torch

    with ExitStack() as stack:
        up, base = _tensors(stack, upload_dir), _tensors(stack, base_dir)
        total = sum(math.prod(base[n].get_slice(n).get_shape()) for n in base)
        diff2 = norm2 = e_diff2 = e_norm2 = 0.0
        covered = 0
        for u_name, b_name in _pairs(up, base):
            b_shape = base[b_name].get_slice(b_name).get_shape()
            if up[u_name].get_slice(u_name).get_shape() != b_shape:
                continue
            covered += math.prod(b_shape)
            is_emb = _is_embedding(b_shape, vocab_size)
            if embeddings_only and not is_emb:
                continue
            b = base[b_name].get_tensor(b_name).double()
            u = up[u_name].get_tensor(u_name).double()
            d2, n2 = float(torch.sum((u - b) ** 2)), float(torch.sum(b**2))
            diff2, norm2 = diff2 + d2, norm2 + n2
            if is_emb:
                e_diff2, e_norm2 = e_diff2 + d2, e_norm2 + n2
    if not covered or norm2 == 0:
        return math.inf, math.inf, covered / max(1, total)
    emb = math.sqrt(e_diff2 / e_norm2) if e_norm2 else math.inf
    whole = math.nan if embeddings_only else math.sqrt(diff2 / norm2)
    return whole, emb, covered / max(1, total)


def identify_base(
    upload_dir: Path,
    candidates: Iterable[tuple[str, Path]],
    *,
    max_distance: float = 0.3,
    min_coverage: float = 0.9,
) -> tuple[str | None, list[BaseCandidate]]:
    """The id of the candidate the upload was fine-tuned from (token embeddings closest, within
    ``max_distance``, at ``min_coverage``), or None; and every candidate with its distances or
    why it was skipped. ``candidates``: (model id, folder) of trusted models; the upload's own
    folder is skipped."""
    upload_dir = Path(upload_dir).resolve()
    want = _config(upload_dir)
    checked: list[BaseCandidate] = []
    for model_id, folder in candidates:
        folder = Path(folder).resolve()
        if folder == upload_dir:
            continue
        have = _config(folder)
        differs = [k for k in _SHAPE_FIELDS if want.get(k) != have.get(k)]
        if differs:
            reason = f"differs in {', '.join(differs)}"
            checked.append(BaseCandidate(model_id, None, None, 0.0, reason))
            continue
        if not _weight_files(folder) or not _weight_files(upload_dir):
            checked.append(BaseCandidate(model_id, None, None, 0.0, "no safetensors weights"))
            continue
        # the embeddings decide; the rest is read only for a match (a 7B model is ~14 GB)
        dist, emb, cov = weight_distance(upload_dir, folder, want.get("vocab_size"), True)
        if emb <= max_distance and cov >= min_coverage:
            dist, emb, cov = weight_distance(upload_dir, folder, want.get("vocab_size"))
        if cov < min_coverage or math.isinf(emb):
            reason = (
                f"shares only {cov:.0%} of its weights with the upload"
                if cov < min_coverage
                else "no token-embedding matrix to compare"
            )
            checked.append(BaseCandidate(model_id, None, None, round(cov, 4), reason))
            continue
        reason = (
            f"token embeddings within {max_distance} of the upload's: the model it was "
            "fine-tuned from"
            if emb <= max_distance
            else f"token embeddings further than {max_distance} from the upload's: another model"
        )
        whole = None if math.isnan(dist) else round(dist, 6)
        checked.append(BaseCandidate(model_id, round(emb, 6), whole, round(cov, 4), reason))
    near = [
        c
        for c in checked
        if c.embedding_distance is not None and c.embedding_distance <= max_distance
    ]
    best = min(near, key=lambda c: c.embedding_distance or 0.0) if near else None
    return (best.model_id if best else None), checked
