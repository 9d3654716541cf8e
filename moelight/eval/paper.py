"""`--tasks paper`: the downstream benchmarks behind the C2R paper's accuracy claim.

The C2R paper (arXiv 2504.01337) reports average accuracy over "ten downstream NLP benchmarks";
its official scripts (UNITES-Lab/c2r-moe) say only "evaluate with lm-evaluation-harness". The ten
below are the lm-eval columns of LLaMA-MoE's own results table (pjlab-sys4nlp/llama-moe README:
SciQ, PIQA, WinoGrande, ARC-e, ARC-c (25), HellaSwag (10), LogiQA, BoolQ (32), LAMBADA, MMLU (5);
its eleventh column, NQ, was run with OpenCompass). Shot counts are that table's; tasks without
one there are run 0-shot. docs/evaluation.md says which parts are stated and which are ours.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperTask:
    label: str  # the column name in the papers' tables
    task: str  # the lm-eval 0.4 task (or group) name
    num_fewshot: int
    metric: str
    shots_stated: bool  # the shot count is printed in the source table (else: 0-shot, our reading)


PAPER_SUITE: tuple[PaperTask, ...] = (
    PaperTask("SciQ", "sciq", 0, "acc", False),
    PaperTask("PIQA", "piqa", 0, "acc", False),
    PaperTask("WinoGrande", "winogrande", 0, "acc", False),
    PaperTask("ARC-e", "arc_easy", 0, "acc", False),
    PaperTask("ARC-c", "arc_challenge", 25, "acc_norm", True),
    PaperTask("HellaSwag", "hellaswag", 10, "acc_norm", True),
    PaperTask("LogiQA", "logiqa", 0, "acc", False),
    PaperTask("BoolQ", "boolq", 32, "acc", True),
    PaperTask("LAMBADA", "lambada_openai", 0, "acc", False),
    PaperTask("MMLU", "mmlu", 5, "acc", True),
)
