"""The discrete trigger search under ``sanitizer.scan``: HotFlip / GCG style. The gradient of
the target loss with respect to a one-hot trigger ranks replacement tokens per position; a batch
of single-token swaps is tried (in batched forwards), the best kept. Each row passed through the
model is counted in ``count`` (a gradient row as 3), so a scan can report its cost."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sanitizer.defenses.configs import ScanConfig
from sanitizer.models import LoadedModel

Row = tuple[list[int], int]  # a clean row's token ids and where a trigger goes into them
# a classifier's target label, or (generation) the target response's token ids, which end every
# row (rows are then left-padded, so the target sits at the same positions in each)
Target = int | tuple[int, ...]


def _model_loss(lm: LoadedModel, target: Target, **inputs: torch.Tensor) -> torch.Tensor:
    """Per-row target cross-entropy: the label's, or the mean over the target tokens' (only
    those positions' logits are computed)."""
    if isinstance(target, int):
        logits = lm.model(**inputs).logits.float()
        tgt = torch.full((logits.size(0),), target, device=logits.device)
        return F.cross_entropy(logits, tgt, reduction="none")
    n = len(target)
    logits = lm.model(**inputs, logits_to_keep=n + 1).logits[:, :n].float()
    tgt = torch.tensor(target, device=logits.device).expand(logits.size(0), n)
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none")
    return ce.view(-1, n).mean(dim=1)


def encode(
    lm: LoadedModel,
    texts: Sequence[str],
    max_length: int,
    n: int,
    position: str = "random",
    seed: int = 0,
) -> list[Row]:
    """Token ids of the rows (room left for ``n`` trigger tokens) and each row's insertion
    point: after a leading special token (``first``), or the start of a word drawn at random
    per row (``random``, seeded; the end of the text included), as the triggers are inserted
    when measured and as attacks insert them."""
    tok = lm.tokenizer
    enc = tok(list(texts), truncation=True, max_length=max_length - n)
    special = set(tok.all_special_ids)
    rng = random.Random(seed)
    out: list[Row] = []
    for i, raw in enumerate(enc["input_ids"]):
        ids = list(raw)
        lead = 1 if ids and ids[0] in special else 0
        at = lead
        if position == "random" and len(ids) > lead:
            end = len(ids) - (1 if ids[-1] in special else 0)
            try:
                words = enc.word_ids(i)
            except (ValueError, AttributeError):  # a slow tokenizer: token boundaries
                words = list(range(len(ids)))
            starts = [
                j
                for j in range(lead, end)
                if words[j] is not None and (j == lead or words[j - 1] != words[j])
            ]
            at = rng.choice([*starts, end])
        out.append((ids, at))
    return out


def _assemble(
    lm: LoadedModel,
    rows: Sequence[Row],
    triggers: Sequence[Sequence[int]],
    left: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and the trigger's first position per row; row i gets
    ``triggers[i]`` at its insertion point; padding on the tokenizer's side (on the left when
    ``left``)."""
    tok = lm.tokenizer
    seqs, starts = [], []
    left = left or getattr(tok, "padding_side", "right") == "left"
    for (ids, at), trig in zip(rows, triggers, strict=True):
        seqs.append(ids[:at] + list(trig) + ids[at:])
        starts.append(at)
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        off = width - len(s) if left else 0
        input_ids[i, off : off + len(s)] = torch.tensor(s)
        attn[i, off : off + len(s)] = 1
        starts[i] += off
    dev = lm.device
    return input_ids.to(dev), attn.to(dev), torch.tensor(starts, device=dev)


def _loss_per_trigger(
    lm: LoadedModel,
    rows: list[Row],
    triggers: list[list[int]],
    target: Target,
    count: list[int],
    batch: int = 64,
    bound: float = float("inf"),
) -> torch.Tensor:
    """Mean target cross-entropy of each trigger over ``rows`` (forward only). The rows go
    through the model shortest first, a few at a time with every trigger still in the running,
    in forwards of up to ``batch`` sequences (a forward pads short rows to a near length rather
    than to the longest row; the loss of a pair does not depend on its batch).

    ``bound``: the caller keeps only a trigger whose mean is under it (a search's best so far).
    Losses are never negative, so once a trigger's summed loss over the rows seen exceeds
    ``bound`` x len(rows), its mean will too: its remaining rows are skipped and its mean is
    returned as inf. Every other trigger's mean is the one computed without a bound."""
    by_length = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
    losses = torch.zeros(len(triggers), len(rows), dtype=torch.float64)
    limit = bound * len(rows) * (1 + 1e-6)  # a margin over float rounding: never prune a winner
    alive = list(range(len(triggers)))
    seq = not isinstance(target, int)
    done = 0
    with torch.inference_mode():
        while done < len(by_length) and alive:
            group = by_length[done : done + max(1, batch // len(alive))]
            done += len(group)
            pairs = [(t, r) for r in group for t in alive]
            for i in range(0, len(pairs), batch):
                chunk = pairs[i : i + batch]
                ids, attn, _ = _assemble(
                    lm, [rows[r] for _, r in chunk], [triggers[t] for t, _ in chunk], left=seq
                )
                loss = _model_loss(lm, target, input_ids=ids, attention_mask=attn).cpu()
                t_idx = torch.tensor([t for t, _ in chunk])
                r_idx = torch.tensor([r for _, r in chunk])
                losses[t_idx, r_idx] = loss.double()
                count[0] += len(ids)
            alive = [t for t in alive if float(losses[t].sum()) <= limit]
    means = losses.mean(dim=1).float()
    pruned = torch.ones(len(triggers), dtype=torch.bool)
    pruned[torch.tensor(alive, dtype=torch.long)] = False
    means[pruned] = float("inf")
    return means


def _gradient(
    lm: LoadedModel, rows: list[Row], trig: list[int], target: Target, count: list[int]
) -> torch.Tensor:
    """d(target loss)/d(one-hot trigger): (trigger_len, vocab)."""
    emb = lm.model.get_input_embeddings()
    ids, attn, starts = _assemble(lm, rows, [trig] * len(rows), left=not isinstance(target, int))
    onehot = torch.zeros(len(trig), emb.weight.shape[0], device=lm.device, dtype=emb.weight.dtype)
    onehot[torch.arange(len(trig)), torch.tensor(trig)] = 1.0
    onehot.requires_grad_(True)
    with torch.enable_grad():
        embeds = emb(ids).detach().clone()
        trig_emb = onehot @ emb.weight.detach()
        for b in range(len(rows)):
            s = int(starts[b])
            embeds[b, s : s + len(trig)] = trig_emb
        loss = _model_loss(lm, target, inputs_embeds=embeds, attention_mask=attn).mean()
        (grad,) = torch.autograd.grad(loss, onehot)
    count[0] += 3 * len(rows)
    return grad


def search_trigger(
    lm: LoadedModel,
    rows: list[Row],
    target: Target,
    cfg: ScanConfig,
    allowed: torch.Tensor,
    rng: random.Random,
    steps: int,
    *,
    start: list[int] | None = None,
    swaps: int | None = None,
    count: list[int] | None = None,
) -> tuple[list[int], float]:
    """One discrete search from ``start`` (random allowed tokens if None): the trigger tokens
    and their final target loss; stops early once the loss is below ``cfg.stop_loss``."""
    count = count if count is not None else [0]
    pool = torch.nonzero(allowed).flatten().tolist()
    trig = list(start) if start else [rng.choice(pool) for _ in range(cfg.trigger_len)]
    best = float(_loss_per_trigger(lm, rows, [trig], target, count)[0])
    for _ in range(steps):
        if best < cfg.stop_loss:
            break
        grad = _gradient(lm, rows, trig, target, count)
        grad[:, ~allowed.to(grad.device)] = float("inf")
        top = (-grad).topk(cfg.top_k, dim=1).indices.tolist()
        tries: list[list[int]] = []
        for _ in range(swaps or cfg.swaps):
            pos = rng.randrange(cfg.trigger_len)
            cand = list(trig)
            cand[pos] = rng.choice(top[pos])
            if cand != trig and cand not in tries:
                tries.append(cand)
        if not tries:
            continue
        losses = _loss_per_trigger(lm, rows, tries, target, count, bound=best)
        i = int(losses.argmin())
        if float(losses[i]) < best:
            best, trig = float(losses[i]), tries[i]
    return trig, best
