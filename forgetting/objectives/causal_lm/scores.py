"""How the benchmarks score a generated answer, computed by the libraries they name, never by hand.

- ``exact_match``: the fraction of generations equal to their reference, both stripped of
  surrounding white space (TRACE's accuracy on its classification and QA tasks, O-LoRA's exact match);
- ``rouge_l``: mean ROUGE-L F-measure of each generation against its reference (Google's
  ``rouge-score`` package, its default tokenizer: lower case, alphanumeric tokens, no stemming);
  TRACE's score of MeetingBank;
- ``bleu``: corpus BLEU (``sacrebleu.corpus_bleu``, its default 13a tokenizer), as a fraction
  (sacrebleu's score / 100), so it shares the scale of accuracies.

``main_score`` names the one a benchmark reports for a task (``gen_score`` of the rows).
"""

from __future__ import annotations

from typing import Sequence

# TRACE (Wang et al. 2023): accuracy on FOMC, C-STANCE, ScienceQA, NumGLUE-cm/ds; ROUGE-L on MeetingBank.
# Py150 (edit similarity) and 20Minuten (SARI) have scores not implemented here: ROUGE-L stands in for them.
TRACE_ROUGE = ("MeetingBank", "Py150", "20Minuten")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    _same_length(predictions, references)
    if not predictions:
        return float("nan")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    if not predictions:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    _same_length(predictions, references)
    if not predictions:
        return float("nan")
    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100.0


def main_score(scoring: str | None, task_name: str) -> str:
    """The score a benchmark reports for a task: ``rouge_l`` or ``exact_match``."""
    if scoring == "trace" and task_name in TRACE_ROUGE:
        return "rouge_l"
    return "exact_match"


def _same_length(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
