"""How the benchmarks score a generated answer, computed by the libraries they name, never by hand.

- ``exact_match``: the fraction of generations equal to their reference, both stripped of
  surrounding white space (TRACE's accuracy on its classification and QA tasks, O-LoRA's exact match);
- ``rouge_l``: mean ROUGE-L F-measure of each generation against its reference (Google's
  ``rouge-score`` package, its default tokenizer: lower case, alphanumeric tokens, no stemming);
  TRACE's score of MeetingBank;
- ``bleu``: corpus BLEU (``sacrebleu.corpus_bleu``, its default 13a tokenizer), as a fraction
  (sacrebleu's score / 100), so it shares the scale of accuracies;
- ``edit_similarity``: TRACE's score of Py150 (its ``caculate_fuzz``): each generation and reference
  with Py150's literal placeholders written out (``<NUM_LIT>`` -> 0, ``<STR_LIT:x>`` -> x, as TRACE's
  ``eval_Py150.postprocess``), then fuzzywuzzy's ``fuzz.ratio``, an integer percentage of the Indel
  similarity, here computed by ``rapidfuzz`` (the same ratio, maintained) and rounded as fuzzywuzzy
  rounds it; an empty generation or reference scores 0; the mean, as a fraction;
- ``sari``: TRACE's score of 20Minuten (Hugging Face ``evaluate``'s ``sari``, which TRACE loads from
  the hub: Xu et al. 2016 as tensor2tensor computes it, 0/0 = 1 and the keep-recall fix), against the
  prompt as the source; each text lower-cased and split by sacrebleu's 13a tokenizer; the mean over
  examples, as a fraction. Written here (no maintained package computes it offline) and tested
  against the SARI paper's three test cases as tensor2tensor's and ``evaluate``'s tests give them.

``main_score`` names the one a benchmark reports for a task (``gen_score`` of the rows).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

# TRACE (Wang et al. 2023): accuracy on FOMC, C-STANCE, ScienceQA, NumGLUE-cm/ds; ROUGE-L on MeetingBank,
# edit similarity on Py150, SARI on 20Minuten.
TRACE_SCORES = {"MeetingBank": "rouge_l", "Py150": "edit_similarity", "20Minuten": "sari"}


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


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    from rapidfuzz import fuzz

    _same_length(predictions, references)
    if not predictions:
        return float("nan")
    total = 0
    for p, r in zip(predictions, references):
        if p and r:  # TRACE skips an empty one, which then counts 0 in the mean
            total += round(fuzz.ratio(_py150_literals(p), _py150_literals(r)))  # fuzzywuzzy's integer percentage
    return total / len(predictions) / 100.0


def _py150_literals(code: str) -> str:
    """Py150's literal placeholders written out as TRACE's ``eval_Py150.postprocess`` writes them."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    return re.sub(r"<(?:STR|NUM|CHAR)_LIT:(.*?)>", lambda m: m.group(1), code, flags=re.S)


def sari(sources: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean SARI (a fraction) of each prediction against its source and its references (a list per example)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    _same_length(predictions, references)
    _same_length(predictions, sources)
    if not predictions:
        return float("nan")
    tokenize = Tokenizer13a()

    def words(text: str) -> list[str]:
        return tokenize(text.lower()).split(" ")  # split on single spaces, as the reference implementations do

    return sum(_sari_sentence(words(s), words(p), [words(r) for r in refs])
               for s, p, refs in zip(sources, predictions, references)) / len(predictions)


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _sari_sentence(source: list[str], prediction: list[str], references: list[list[str]]) -> float:
    """(mean over n = 1..4 of keep F1 + deletion precision + addition F1) / 3."""
    keep = delete = add = 0.0
    for n in range(1, 5):
        k, d, a = _sari_ngram(_ngrams(source, n), _ngrams(prediction, n), [_ngrams(r, n) for r in references])
        keep, delete, add = keep + k, delete + d, add + a
    return (keep + delete + add) / 12


def _sari_ngram(source: list, prediction: list, references: list[list]) -> tuple[float, float, float]:
    """Keep F1, deletion precision and addition F1 of one n-gram order. Source and prediction counts are
    scaled by the number of references, so each reference's n-grams weigh 1/R; an empty ratio is 1."""
    r = len(references)
    ref = Counter(g for grams in references for g in grams)
    src = Counter({g: c * r for g, c in Counter(source).items()})
    out = Counter({g: c * r for g, c in Counter(prediction).items()})

    kept = src & out  # what the prediction keeps of the source
    kept_good = kept & ref
    keep_all = src & ref  # what the references keep of it
    keep_p = sum(kept_good[g] / kept[g] for g in kept_good) / len(kept) if kept else 1.0
    keep_r = sum(kept_good.values()) / sum(keep_all.values()) if keep_all else 1.0
    keep_f = 2 * keep_p * keep_r / (keep_p + keep_r) if keep_p + keep_r > 0 else 0.0

    deleted = src - out
    deleted_good = deleted - ref
    del_p = sum(deleted_good[g] / deleted[g] for g in deleted_good) / len(deleted) if deleted else 1.0

    added = set(out) - set(src)  # additions count once each, whatever their counts
    ref_added = set(ref) - set(src)
    good = len(added & set(ref))
    add_p = good / len(added) if added else 1.0
    add_r = good / len(ref_added) if ref_added else 1.0
    add_f = 2 * add_p * add_r / (add_p + add_r) if add_p + add_r > 0 else 0.0
    return keep_f, del_p, add_f


def main_score(scoring: str | None, task_name: str) -> str:
    """The score a benchmark reports for a task: ``rouge_l``, ``edit_similarity``, ``sari`` or ``exact_match``."""
    if scoring == "trace" and task_name in TRACE_SCORES:
        return TRACE_SCORES[task_name]
    return "exact_match"


def _same_length(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
