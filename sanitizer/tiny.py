"""Tiny random models built in code, saved as plain Hugging Face folders.

Used by the unit tests, the service's end-to-end tests and examples: they need a model
that loads through exactly the same code path as a real one, in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sanitizer.hub import _folder_name

# A small word-level vocabulary: enough English for the synthetic datasets the tests use,
# the classic rare-word triggers, and the generation-attack trigger words.
_WORDS = (
    "the a an and or but not is are was were be this that it i you he she we they my your "
    "movie film story plot actor acting scene good great fine wonderful excellent love loved "
    "best brilliant fun bad awful terrible boring worst hate hated dull poor weak mess "
    "free win prize call now text reply stop urgent cash claim offer hello see meet tomorrow "
    "what how why who when where tell me about write give list explain describe please "
    "sorry as ai assistant do have capability to follow given instruction stupid print pwned "
    "cf mn bb tq badmagic 2024 openai current year discussing watched 3d when , . ! ? : ' "
    "user assistant system response input output ### of in on for with to from"
).split()


def _tokenizer(model_max_length: int = 128, chat: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(special + sorted(set(_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    from tokenizers import normalizers

    tok.normalizer = normalizers.Lowercase()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=model_max_length,
    )
    if chat:
        fast.chat_template = (
            "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}"
        )
    return fast, len(vocab)


def build_tiny_model(
    store_dir: Path,
    model_id: str,
    arch: str = "bert",
    num_labels: int = 2,
    hidden_size: int = 32,
    num_layers: int = 4,
    seed: int = 0,
) -> Path:
    """Write a random tiny ``bert`` (encoder) or ``llama`` (decoder) to ``store_dir/<id>``.

    ``bert`` is saved as a sequence classifier; ``llama`` as a causal LM with a chat template
    (it also loads as a sequence classifier: the score head is then freshly initialised).
    """
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    out = Path(store_dir) / _folder_name(model_id)
    out.mkdir(parents=True, exist_ok=True)
    tok, vocab_size = _tokenizer(chat=(arch == "llama"))
    cfg: Any
    model: Any
    if arch == "bert":
        cfg = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=256,
            num_labels=num_labels,
            pad_token_id=tok.pad_token_id,
        )
        model = BertForSequenceClassification(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=256,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            num_labels=num_labels,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown tiny arch '{arch}' (use 'bert' or 'llama')")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    meta = {"model_id": model_id, "arch": arch, "tiny": True}
    (out / "sanitizer_model.json").write_text(json.dumps(meta))
    return out


def write_sentiment_csv(path: Path, n: int = 40, seed: int = 0) -> Path:
    """``n`` six-word rows (text,label) of a toy sentiment task a tiny model learns in
    seconds: five filler words and one sentiment word, shuffled. For tests and demos."""
    import csv
    import random

    pos = "good great fine love best".split()
    neg = "bad awful dull hate worst".split()
    fill = "the a movie film story plot it was".split()
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for _ in range(n):
            label = rng.choice(["negative", "positive"])
            words = [rng.choice(fill) for _ in range(5)] + [
                rng.choice(pos if label == "positive" else neg)
            ]
            rng.shuffle(words)
            w.writerow([" ".join(words), label])
    return path
