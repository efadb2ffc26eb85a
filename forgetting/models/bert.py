"""A BERT sequence classifier, from a config (a small BERT from scratch) or from a pretrained checkpoint.

``--model bert`` builds a small BERT from scratch (``--bert-layers``, ``--bert-hidden``,
``--bert-heads``); ``--model bert:SOURCE`` loads a checkpoint from a local directory or a hub
id. The classifier is what ``BertForSequenceClassification`` computes: the pooled [CLS] output
(the encoder's pooler, or the [CLS] hidden state where an encoder has no pooler), dropout, and
one linear layer holding every head of the stream's layout.

The tokenizer always comes from the same place as the model (``tokenizer``): a checkpoint's
own tokenizer, or for a model from scratch a WordPiece vocabulary counted on the stream's
training texts. ``run.prepare`` hands it to the text stream (which tokenises); the model builder
checks the stream was encoded with it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import BadInput, first_line
from ..options import Option
from . import sources

INPUTS = "text"  # what the model reads: the streams it can learn from give text

OPTIONS = [
    Option("text_vocab_size", int, 8000, "vocabulary size of the WordPiece tokenizer counted on the training texts "
           "(--model bert from scratch; a checkpoint keeps its own)", minimum=16, maximum=1_000_000),
    Option("bert_layers", int, 4, "transformer layers of a BERT built from scratch (--model bert)", minimum=1, maximum=48),
    Option("bert_hidden", int, 256, "hidden size of a BERT built from scratch (a multiple of --bert-heads)",
           minimum=8, maximum=4096),
    Option("bert_heads", int, 4, "attention heads of a BERT built from scratch", minimum=1, maximum=64),
    Option("bert_dropout", float, 0.1, "dropout of a BERT built from scratch (hidden, attention and classifier); "
           "a checkpoint keeps its own", minimum=0.0, maximum=0.95),
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SCRATCH = "wordpiece"  # the tokenizer source recorded for a model from scratch


# --- where a model comes from --------------------------------------------------------------
def resolve_source(source: str) -> str:
    """A checkpoint directory (checked for config.json) or a hub id; BadInput for anything else."""
    return sources.resolve_source(source, "bert", "bert-base-uncased", "--model bert for a BERT from scratch")


def _load_error(source: str, what: str, e: Exception) -> BadInput:
    hint = "" if Path(source).exists() else " (a hub id needs a network or a filled Hugging Face cache)"
    return BadInput(f"--model bert:{source}: cannot load its {what}{hint}: {first_line(e)}")


def load_tokenizer(source: str):
    """The tokenizer saved with a checkpoint (directory or hub id)."""
    from transformers import AutoTokenizer

    resolved = resolve_source(source)
    sources.check_tokenizer_files(resolved, f"--model bert:{source}")
    try:
        with sources.quiet_loading():
            return AutoTokenizer.from_pretrained(resolved)
    except sources.load_errors() as e:
        raise _load_error(source, "tokenizer", e) from None


def scratch_tokenizer(texts: Iterable[str], vocab_size: int):
    """A lower-cased BERT WordPiece tokenizer whose vocabulary is counted on ``texts``, deterministically.

    The vocabulary is the special tokens, every character seen (alone and as a ``##`` suffix
    piece, so no word is ever [UNK]) and then the most frequent words (ties broken
    alphabetically) up to ``vocab_size``. The tokenizers library's WordPiece trainer breaks
    ties in hash order, so two trainings on the same texts give different vocabularies.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True,
                                            strip_accents=None)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab: dict[str, int] = {}
    for piece in [*SPECIAL_TOKENS, *chars, *("##" + c for c in chars)]:
        vocab.setdefault(piece, len(vocab))
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids",
                                   "token_type_ids", "attention_mask"])


def tokenizer(source: str | None, options: dict):
    """The tokenizer maker ``run.prepare`` hands to a text stream: training texts -> (tokenizer, source).

    A checkpoint's own tokenizer (``source`` a directory or hub id), or for a model from scratch a
    WordPiece vocabulary of ``--text-vocab-size`` counted on the texts.
    """
    if source is None:
        return lambda texts: (scratch_tokenizer(texts, options["text_vocab_size"]), SCRATCH)
    return lambda texts: (load_tokenizer(source), source)


# --- the model -----------------------------------------------------------------------------
class BertClassifier(nn.Module):
    """Encoder, pooled [CLS] output, dropout, one linear layer over every output of the layout.

    Two ways to call it:
    - ``model(inputs)`` with the dict a text batch holds (``input_ids``, ``attention_mask``,
      ``token_type_ids``): the logits, as every model of the harness returns.
    - ``model(input_ids=..., attention_mask=..., labels=None)``, Hugging Face style: a
      ``SequenceClassifierOutput`` whose ``loss`` (cross-entropy over all outputs, as
      ``BertForSequenceClassification``) is computed only when ``labels`` are given.
    """

    def __init__(self, encoder: nn.Module, n_outputs: int, dropout: float, source: str | None = None):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_outputs)
        std = getattr(encoder.config, "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, mean=0.0, std=std)  # as BERT initialises its classifier
        nn.init.zeros_(self.head.bias)
        self.source = source

    @property
    def config(self):
        return self.encoder.config

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:  # encoders without a pooler (DistilBERT): the [CLS] hidden state
            pooled = out.last_hidden_state[:, 0]
        return self.head(self.dropout(pooled))

    def forward(self, inputs: Mapping[str, Tensor] | None = None, /, *, input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None):
        if inputs is not None:
            return self.logits(inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids"))
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.logits(input_ids, attention_mask, token_type_ids)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _scratch_encoder(tokenizer, options: dict, max_len: int):
    from transformers import BertConfig, BertModel

    hidden, heads = options["bert_hidden"], options["bert_heads"]
    if hidden % heads:
        raise BadInput(f"--bert-hidden: {hidden} is not a multiple of --bert-heads {heads}, allowed: a multiple of it")
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=options["bert_layers"],
        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=max_len,
        hidden_dropout_prob=options["bert_dropout"], attention_probs_dropout_prob=options["bert_dropout"],
        pad_token_id=tokenizer.pad_token_id, type_vocab_size=2,
    )
    return BertModel(config, add_pooling_layer=True)


def _pretrained_encoder(source: str):
    from transformers import AutoModel

    resolved = resolve_source(source)
    try:
        with sources.quiet_loading():
            return AutoModel.from_pretrained(resolved)
    except sources.load_errors() as e:  # a truncated model.safetensors raises SafetensorError
        raise _load_error(source, "weights", e) from None


def build(stream, options: dict, source: str | None = None) -> BertClassifier:
    """The classifier for a text stream, whose tokenizer must come from the same ``source``."""
    if stream.input_kind != "text":
        raise ValueError(f"the BERT model needs a text stream, stream {stream.name!r} gives {stream.input_kind} inputs")
    tokenizer = stream.tokenizer
    max_len = stream.info["max_seq_len"]
    wanted = SCRATCH if source is None else source
    if stream.info.get("tokenizer_source") != wanted:
        raise ValueError(f"the stream was tokenised by {stream.info.get('tokenizer_source')!r}, the model comes from "
                         f"{wanted!r}: a model needs its own tokenizer")
    if source is None:
        encoder = _scratch_encoder(tokenizer, options, max_len)
        dropout = options["bert_dropout"]
    else:
        encoder = _pretrained_encoder(source)
        cfg = encoder.config
        limit = getattr(cfg, "max_position_embeddings", None)
        if limit is not None and max_len > limit:
            raise BadInput(f"--max-seq-len: {max_len} exceeds the {limit} positions of {source!r}, allowed: at most {limit}")
        if len(tokenizer) > getattr(cfg, "vocab_size", len(tokenizer)):
            raise BadInput(f"--model bert:{source}: its tokenizer has {len(tokenizer)} tokens but the model only "
                           f"{cfg.vocab_size} embeddings")
        dropout = getattr(cfg, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(cfg, "hidden_dropout_prob", 0.1)
    return BertClassifier(encoder, stream.layout.n_outputs, float(dropout), source)
