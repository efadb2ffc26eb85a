"""Causal language models: a small GPT-2 from a config, or any local Hugging Face causal-LM checkpoint.

``--model gpt2`` builds a GPT-2 from ``transformers.GPT2Config`` (``--gpt2-layers``,
``--gpt2-width``, ``--gpt2-heads``, context = ``--max-seq-len``) with a byte-level tokenizer:
every UTF-8 byte is one token, plus ``<|endoftext|>`` (begin and end of a text) and ``<|pad|>``.
It needs no download and no training, so it is the same on every machine.
``--model causal:SOURCE`` loads ``AutoModelForCausalLM`` and ``AutoTokenizer`` from a checkpoint
directory (what ``save_pretrained`` writes) or a hub id (for users with a network).

The model is wrapped in :class:`CausalLM`: ``model(inputs)`` returns the next-token logits
[batch, length, vocabulary] of a batch dict, as every model of the harness returns its logits.
With ``--lora-rank R`` the fine-tuning tasks (task 1 on; the base task trains every weight)
train LoRA adapters through ``peft``: at each task boundary the adapters are merged into the
weights and new ones started, so the penalty's reference (the model at the last boundary) is the
live model with its adapters disabled, not a second copy in memory.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import BadInput, first_line
from ..options import Option
from ..objectives.causal_lm.data import OPTIONS as LM_OPTIONS
from ..objectives.causal_lm.data import lm_stream
from ..streams.text import TokenizerMaker
from . import sources

INPUTS = "text"  # what the model reads: the text streams, as language-modelling tasks (objectives/causal_lm/data.py)
OBJECTIVE = "causal-lm"  # what it predicts: the next token (forgetting.objectives.causal_lm)

OPTIONS = [
    *LM_OPTIONS,
    Option("gpt2_layers", int, 2, "transformer layers of a GPT-2 built from scratch (--model gpt2)", minimum=1,
           maximum=48),
    Option("gpt2_width", int, 128, "hidden size of a GPT-2 built from scratch (a multiple of --gpt2-heads)",
           minimum=8, maximum=8192),
    Option("gpt2_heads", int, 4, "attention heads of a GPT-2 built from scratch", minimum=1, maximum=128),
    Option("gpt2_dropout", float, 0.1, "dropout of a GPT-2 built from scratch (residual, embedding and attention); "
           "a checkpoint keeps its own", minimum=0.0, maximum=0.95),
    Option("precision", str, "float32", "causal LMs: float32, or bf16 = bfloat16 autocast of the forward pass on "
           "cuda (the losses and the penalty stay float32; CPU runs are float32)", choices=("float32", "bf16")),
    Option("lora_rank", int, 0, "causal LMs: fine-tune tasks 1 on through LoRA adapters of this rank (peft), "
           "merged into the weights at each task boundary (0: train every weight)", minimum=0, maximum=4096),
    Option("lora_alpha", float, 0.0, "LoRA scaling alpha (0: twice --lora-rank)", minimum=0.0),
    Option("lora_targets", str, "all-linear", "LoRA target modules: all-linear (every linear layer but the output "
           "layer, as Biderman et al. 2024) or a comma-separated list of module names, e.g. c_attn,c_proj"),
]

SCRATCH = "bytes"  # the tokenizer source recorded for a GPT-2 from scratch
EOT, PAD = "<|endoftext|>", "<|pad|>"


# --- tokenizers ----------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the alphabet of byte-level tokenizers)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def byte_tokenizer():
    """GPT-2's byte-level encoding without merges: token id = byte value, then ``<|endoftext|>``, ``<|pad|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in sorted(bytes_to_unicode().items())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=PAD)
    assert fast.convert_tokens_to_ids(EOT) == 256 and fast.pad_token_id == 257
    return fast


def resolve_source(source: str) -> str:
    """A checkpoint directory (checked for config.json) or a hub id; BadInput for anything else."""
    return sources.resolve_source(source, "causal", "gpt2", "--model gpt2 for a GPT-2 from scratch")


def load_tokenizer(source: str):
    """A checkpoint's own tokenizer, checked: it must have a pad token and an end-of-text token."""
    from transformers import AutoTokenizer

    resolved = resolve_source(source)
    sources.check_tokenizer_files(resolved, f"--model causal:{source}")
    try:
        with sources.quiet_loading():
            tok = AutoTokenizer.from_pretrained(resolved)
    except sources.load_errors() as e:
        raise BadInput(f"--model causal:{source}: cannot load its tokenizer: {first_line(e)}") from None
    if tok.pad_token_id is None:
        raise BadInput(f"--model causal:{source}: its tokenizer has no pad token, allowed: a tokenizer with "
                       "pad_token set (e.g. tokenizer.pad_token = tokenizer.eos_token before save_pretrained)")
    if tok.eos_token_id is None:
        raise BadInput(f"--model causal:{source}: its tokenizer has no end-of-text (eos) token, allowed: a "
                       "tokenizer with eos_token set")
    return tok


def tokenizer(source: str | None, options: dict):
    """The tokenizer maker ``run.prepare`` hands to a text stream: training texts -> (tokenizer, source).

    The byte-level tokenizer (``--model gpt2``) or a checkpoint's own (``causal:SOURCE``). The
    maker carries the LM encoding of the raw tasks (``lm_stream``) and the LM task options, so the text
    stream builds language-modelling tasks (``objectives/causal_lm/data.py``) in that form.
    """
    if source is None:
        def make(texts):
            return byte_tokenizer(), SCRATCH
    else:
        resolve_source(source)  # a bad source is reported before any text is read

        def make(texts):
            return load_tokenizer(source), source
    return TokenizerMaker(make, lm_stream, {o.name: options.get(o.name, o.default) for o in LM_OPTIONS})


# --- the model -----------------------------------------------------------------------------
class CausalLM(nn.Module):
    """A Hugging Face causal LM: ``model(inputs)`` gives next-token logits [batch, length, vocabulary].

    ``inputs`` is a text batch dict (``input_ids``, ``attention_mask``; ``labels`` is ignored:
    the loss is the harness's). ``model(input_ids=..., attention_mask=..., labels=...)`` is the
    wrapped model's own call (a ``CausalLMOutput`` with its loss when labels are given).
    """

    def __init__(self, lm: nn.Module, source: str | None, lora: dict | None = None, precision: str = "float32"):
        super().__init__()
        self.lm = lm
        self.source = source
        self.lora = lora if lora and lora.get("rank") else None
        self.keeps_own_reference = self.lora is not None  # teacher.boundary_references: task_boundary gives it
        self.precision = precision

    @property
    def config(self):
        return self.lm.config

    def forward(self, inputs: dict | None = None, /, **kwargs):
        ids = inputs["input_ids"] if inputs is not None else kwargs.get("input_ids")
        autocast = self.precision == "bf16" and ids is not None and ids.is_cuda
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            if inputs is not None:
                return self.lm(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                               use_cache=False).logits
            return self.lm(**kwargs)

    # --- LoRA ---------------------------------------------------------------------------------
    @property
    def has_adapters(self) -> bool:
        from peft import PeftModel

        return isinstance(self.lm, PeftModel)

    def start_adapters(self) -> None:
        """Merge the current adapters (if any) into the weights, then wrap the model in fresh ones."""
        from peft import LoraConfig, get_peft_model

        if self.has_adapters:
            self.lm = self.lm.merge_and_unload()
        r = self.lora["rank"]
        targets = self.lora["targets"]
        config = LoraConfig(r=r, lora_alpha=self.lora["alpha"] or 2.0 * r, lora_dropout=0.0, bias="none",
                            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                            task_type="CAUSAL_LM")
        try:
            with warnings.catch_warnings():  # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself, and says so
                warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
                # peft (0.21) reads transformers' deprecated is_gradient_checkpointing: a warning per run for a
                # call between the two libraries that the user cannot act on
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
                self.lm = get_peft_model(self.lm, config)
        except ValueError as e:
            raise BadInput(f"--lora-targets {targets}: {first_line(e)}") from None

    def task_boundary(self, task: int) -> nn.Module | None:
        """Called by the loop at the end of ``task``: with LoRA, merge and restart the adapters and return
        the reference (the model as it is now, adapters disabled); without LoRA, None (the loop copies)."""
        if self.lora is None:
            return None
        device = next(self.parameters()).device
        self.start_adapters()
        self.to(device)
        return AdapterDisabled(self)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Weights saved with adapters (a LoRA run's checkpoint) get adapters first; plain weights drop them."""
        saved_adapters = any("lora_" in k for k in state_dict)
        if saved_adapters and self.lora is not None and not self.has_adapters:
            device = next(self.parameters()).device
            self.start_adapters()
            self.to(device)
        elif not saved_adapters and self.has_adapters:
            self.lm = self.lm.unload()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @contextlib.contextmanager
    def adapters_disabled(self):
        if self.has_adapters:
            with self.lm.disable_adapter():
                yield
        else:
            yield


class AdapterDisabled(nn.Module):
    """The reference of a LoRA run: the live model in eval mode, adapters disabled, under ``no_grad``.

    It holds no parameters of its own (the model is kept out of the module tree), so the weights
    the penalty compares against are the merged weights of the last task boundary, shared with
    the student but never trained (adapters hold all trainable weights).
    """

    def __init__(self, model: CausalLM):
        super().__init__()
        self.__dict__["_target"] = model  # not a submodule: no parameters, no state_dict entries
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # a reference is always in eval mode

    def forward(self, inputs):
        model = self._target
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), model.adapters_disabled():
                return model(inputs)
        finally:
            model.train(was)


def _scratch_lm(tokenizer, options: dict, context: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    width, heads = options["gpt2_width"], options["gpt2_heads"]
    if width % heads:
        raise BadInput(f"--gpt2-width: {width} is not a multiple of --gpt2-heads {heads}, allowed: a multiple of it")
    p = options["gpt2_dropout"]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=width, n_layer=options["gpt2_layers"],
                        n_head=heads, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
                        activation_function="gelu",  # torch's GELU kernel: GPT-2's tanh form runs as several ops
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def _pretrained_lm(source: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    resolved = resolve_source(source)
    try:
        with sources.quiet_loading():
            config = AutoConfig.from_pretrained(resolved)
            return AutoModelForCausalLM.from_pretrained(resolved, config=config)
    except sources.load_errors() as e:  # a truncated model.safetensors raises SafetensorError
        if not isinstance(e, (OSError, ValueError, KeyError, TypeError)):
            raise BadInput(f"--model causal:{source}: cannot read its weights (a truncated or damaged file?): "
                           f"{first_line(e)}") from None
        raise BadInput(f"--model causal:{source}: not a causal language model checkpoint "
                       f"(AutoModelForCausalLM cannot load it): {first_line(e)}") from None


def trains_adapters(options: dict) -> bool:
    """Whether fine-tuning trains fresh LoRA adapters at every task (methods that anchor weights do not apply)."""
    return bool(options.get("lora_rank"))


def check_device(options: dict, device: torch.device) -> None:
    """BadInput where the model's precision cannot run on ``device`` (bf16 autocast is CUDA-only here)."""
    if options.get("precision", "float32") == "bf16" and device.type != "cuda":
        raise BadInput(f"--precision bf16: autocast runs on cuda only, the device is {device.type}; allowed here: "
                       "float32")


def build(stream, options: dict, source: str | None = None) -> CausalLM:
    """The causal LM for an LM stream, whose tokenizer must come from the same ``source``."""
    if stream.objective != OBJECTIVE:
        raise BadInput(f"--model: a causal LM needs a text stream (uci-sentiment, ag-news, clinc150, text-file, "
                       f"five-datasets), stream {stream.name!r} gives {stream.input_kind} inputs")
    tokenizer = stream.tokenizer
    context = stream.info["max_seq_len"]
    wanted = SCRATCH if source is None else source
    if stream.info.get("tokenizer_source") != wanted:
        raise ValueError(f"the stream was tokenised by {stream.info.get('tokenizer_source')!r}, the model comes from "
                         f"{wanted!r}: a model needs its own tokenizer")
    if source is None:
        lm = _scratch_lm(tokenizer, options, context)
    else:
        lm = _pretrained_lm(source)
        limit = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
        if limit is not None and context > limit:
            raise BadInput(f"--max-seq-len: {context} exceeds the {limit} positions of {source!r}, allowed: at most {limit}")
        emb = lm.get_input_embeddings().num_embeddings
        if len(tokenizer) > emb:
            raise BadInput(f"--model causal:{source}: its tokenizer has {len(tokenizer)} tokens but the model only "
                           f"{emb} embeddings")
    lora = {"rank": options.get("lora_rank", 0), "alpha": options.get("lora_alpha", 0.0),
            "targets": options.get("lora_targets", "all-linear")}
    if lora["rank"]:
        from ..extras import require

        require("lm", "--lora-rank", ("peft",))
    return CausalLM(lm, source, lora, options.get("precision", "float32"))
