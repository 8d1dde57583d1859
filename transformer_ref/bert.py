"""BERT (Devlin et al. 2019): embeddings, a post-LN GELU encoder, the pooler, the masked-language-model
head, the masking recipe used for pre-training, and loading of Hugging Face checkpoints.

    from transformer_ref.bert import BertConfig, BertModel, BertForMaskedLM, mask_tokens

Mask conventions. The models take a Hugging Face style ``attention_mask`` of shape (B, T) with
1 = real token and 0 = padding, because that is what tokenizers return; it is turned into this
package's convention (bool, True = may attend, shape (B, 1, T), broadcast over the queries) inside
``BertModel.forward``. Padding positions still get outputs (they attend to the real tokens); ignore them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref._checks import check_ndim, check_positive_int, check_same_device, check_tensor, check_values
from transformer_ref._convert import load_converted_state_dict
from transformer_ref.layers import LayerNorm
from transformer_ref.model import Encoder

__all__ = [
    "BertConfig",
    "BertEmbeddings",
    "BertOutput",
    "BertModel",
    "BertMLMHead",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "mask_tokens",
    "load_hf_bert",
]

IGNORE_INDEX = -100
"""Label value that ``F.cross_entropy`` ignores (its default ``ignore_index``)."""


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT model; the defaults are BERT-base (L=12, H=768, A=12; Devlin et al. 2019, Sec. 3).

    Field names follow this package (``d_model``, ``num_heads``, ``d_ff``); ``from_hf`` translates a
    Hugging Face ``transformers.BertConfig`` (``hidden_size``, ``num_attention_heads``, ...).
    ``pad_token_id``: the [PAD] id, whose embedding row is zero at init and gets no gradient (None: none).
    """

    vocab_size: int = 30522
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int = 3072
    max_len: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    pad_token_id: int | None = 0

    @classmethod
    def from_hf(cls, hf_config: Any) -> BertConfig:
        """Translate a ``transformers.BertConfig``.

        Raises ValueError for settings this implementation does not have: an activation other than
        the exact (erf) "gelu", or relative position embeddings. ``dropout`` is taken from
        ``hidden_dropout_prob`` (this implementation uses one rate everywhere).
        """
        if hf_config.hidden_act != "gelu":
            raise ValueError(f"hf_config.hidden_act must be 'gelu' (exact, erf-based GELU); "
                             f"got {hf_config.hidden_act!r}")
        position_type = getattr(hf_config, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"hf_config.position_embedding_type must be 'absolute'; got {position_type!r}")
        return cls(
            vocab_size=hf_config.vocab_size,
            d_model=hf_config.hidden_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads,
            d_ff=hf_config.intermediate_size,
            max_len=hf_config.max_position_embeddings,
            type_vocab_size=hf_config.type_vocab_size,
            layer_norm_eps=hf_config.layer_norm_eps,
            dropout=hf_config.hidden_dropout_prob,
            pad_token_id=hf_config.pad_token_id,
        )


class BertEmbeddings(nn.Module):
    """E = Dropout(LayerNorm(token_emb[x_t] + position_emb[t] + segment_emb[s_t]))  (Devlin et al. 2019, Fig. 2).

    input_ids: (B, T) long, T <= max_len;  token_type_ids: (B, T) long in [0, type_vocab_size)
    (segment A = 0, B = 1), default all 0.  Returns (B, T, d_model).
    ``padding_idx`` (optional) keeps that token's embedding row out of the gradient, as ``nn.Embedding`` does.
    """

    def __init__(self, vocab_size: int, d_model: int, max_len: int, type_vocab_size: int,
                 layer_norm_eps: float = 1e-12, dropout: float = 0.0, padding_idx: int | None = None):
        super().__init__()
        self.max_len = check_positive_int(max_len, "max_len")
        self.word_embeddings = nn.Embedding(check_positive_int(vocab_size, "vocab_size"),
                                            check_positive_int(d_model, "d_model"), padding_idx=padding_idx)
        self.position_embeddings = nn.Embedding(max_len, d_model)
        self.token_type_embeddings = nn.Embedding(check_positive_int(type_vocab_size, "type_vocab_size"), d_model)
        self.norm = LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        _check_embedding_inputs(input_ids, token_type_ids, self.max_len)  # arguments checked here
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)                              # segment A everywhere
        positions = torch.arange(input_ids.size(1), device=input_ids.device)         # (T,)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))                            # (B, T, d_model)
        return self.dropout(self.norm(x))


class BertOutput(NamedTuple):
    """What ``BertModel`` returns.

    last_hidden_state: (B, T, d_model);  pooler_output: (B, d_model), or None without a pooler;
    attentions: one (B, H, T, T) weight tensor per layer when ``need_weights``, else None.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None
    attentions: list[torch.Tensor] | None


class BertModel(nn.Module):
    """BERT encoder: ``BertEmbeddings`` -> post-LN Transformer encoder with GELU -> pooler.

    The pooler is tanh(W h_[CLS] + b) on the first token (Devlin et al. 2019, Sec. 3; the released code),
    the representation that sentence-level heads use. ``add_pooling_layer=False`` drops it
    (as Hugging Face's ``BertForMaskedLM`` does).
    Weights are initialised as in BERT: normal(0, 0.02) for linear and embedding weights, zero biases.
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config.vocab_size, config.d_model, config.max_len, config.type_vocab_size,
                                         config.layer_norm_eps, config.dropout, padding_idx=config.pad_token_id)
        self.encoder = Encoder(config.num_layers, config.d_model, config.num_heads, config.d_ff,
                               dropout=config.dropout, activation="gelu", norm_first=False,
                               layer_norm_eps=config.layer_norm_eps)
        self.pooler = nn.Linear(config.d_model, config.d_model) if add_pooling_layer else None
        self.apply(_init_bert_weights)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, need_weights: bool = False) -> BertOutput:
        """input_ids, token_type_ids: (B, T) long.
        attention_mask: (B, T), Hugging Face convention: 1 (or True) = real token, 0 = padding; default all 1.
        Converted to this package's convention: bool (B, 1, T), True = may attend. A sequence that is
        all padding gets zero attention output (Hugging Face's additive mask would attend uniformly).
        Returns a ``BertOutput`` (last_hidden_state, pooler_output, attentions).
        """
        x = self.embeddings(input_ids, token_type_ids)                                # (B, T, d_model)
        mask = None if attention_mask is None else _to_key_mask(attention_mask, input_ids)  # (B, 1, T)
        attentions = None
        if need_weights:
            x, attentions = self.encoder(x, mask, need_weights=True)
        else:
            x = self.encoder(x, mask)                                                 # (B, T, d_model)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, d_model)
        return BertOutput(x, pooled, attentions)


class BertMLMHead(nn.Module):
    """Masked-language-model head: logits = LayerNorm(gelu(dense(h))) E^T + b, with E the (tied) word embeddings.

    h: (B, T, d_model); embedding_weight E: (vocab_size, d_model). Returns logits (B, T, vocab_size).
    """

    def __init__(self, d_model: int, vocab_size: int, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.norm = LayerNorm(d_model, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(h)))                                          # (B, T, d_model)
        return F.linear(h, embedding_weight, self.bias)                               # (B, T, vocab_size)


class BertForMaskedLM(nn.Module):
    """BERT (no pooler) + ``BertMLMHead`` whose output matrix is the word-embedding matrix (tied).

    forward(input_ids, token_type_ids=None, attention_mask=None) -> logits (B, T, vocab_size).
    Train with ``F.cross_entropy(logits.flatten(0, 1), labels.flatten())`` on the labels of
    ``mask_tokens`` (-100 = not predicted, ignored by default).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.mlm_head = BertMLMHead(config.d_model, config.vocab_size, config.layer_norm_eps)
        self.mlm_head.apply(_init_bert_weights)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state    # (B, T, d_model)
        return self.mlm_head(h, self.bert.embeddings.word_embeddings.weight)


class BertForSequenceClassification(nn.Module):
    """BERT + pooler -> dropout -> linear, for sentence(-pair) classification fine-tuning (Devlin et al. 2019, Sec. 4).

    forward(input_ids, token_type_ids=None, attention_mask=None) -> logits (B, num_classes).
    """

    def __init__(self, config: BertConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, check_positive_int(num_classes, "num_classes"))
        self.classifier.apply(_init_bert_weights)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.bert(input_ids, token_type_ids, attention_mask).pooler_output   # (B, d_model)
        return self.classifier(self.dropout(pooled))                                  # (B, num_classes)


def mask_tokens(input_ids: torch.Tensor, mask_token_id: int, vocab_size: int,
                special_token_ids: Sequence[int] | torch.Tensor, mlm_probability: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption (Devlin et al. 2019, Sec. 3.1 and Appendix A.1).

    Each token that is not special is chosen independently with probability ``mlm_probability``.
    A chosen token is replaced by ``mask_token_id`` with probability 0.8, by a token drawn uniformly
    from [0, vocab_size) with probability 0.1, and left unchanged with probability 0.1.
    Tokens in ``special_token_ids`` ([CLS], [SEP], [PAD], ...) are never chosen: include the padding id.

    input_ids: (...) integer tensor; it is not modified.
    Returns (inputs, labels), both shaped and typed like input_ids: ``inputs`` is the corrupted copy,
    ``labels`` holds the original token where chosen and -100 (ignored by ``F.cross_entropy``) elsewhere.

    Randomness: all random numbers come from ``generator`` and are drawn on ``generator.device``, then
    moved to ``input_ids.device``; without a generator they come from the global generator of
    ``input_ids.device``. So a CPU generator works for CUDA inputs and gives the same result as for
    the same inputs on the CPU; a CUDA generator works too (and draws on the GPU).
    """
    _check_mask_tokens_args(input_ids, mask_token_id, vocab_size, mlm_probability)  # arguments checked here
    device = input_ids.device
    rng_device = generator.device if generator is not None else device

    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=rng_device).to(device)

    special_ids = torch.as_tensor(special_token_ids, dtype=input_ids.dtype).to(device).flatten()
    chosen = (uniform() < mlm_probability) & ~torch.isin(input_ids, special_ids)
    action = uniform()                                                 # < 0.8 [MASK], < 0.9 random, else keep
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=rng_device,
                               dtype=input_ids.dtype).to(device)

    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    inputs = torch.where(chosen & (action < 0.8), mask_token_id, input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, labels


# --- Hugging Face checkpoints ------------------------------------------------------------------

# Hugging Face BERT names (without the "bert." prefix of the head models) -> ours (relative to BertModel).
_HF_BERT_BACKBONE_RULES = [
    (r"^embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"^embeddings\.(word|position|token_type)_embeddings\.", r"embeddings.\1_embeddings."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"encoder.layers.\1.self_attn.W_q."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"encoder.layers.\1.self_attn.W_k."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"encoder.layers.\1.self_attn.W_v."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.W_o."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"encoder.layers.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.feed_forward.linear1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.feed_forward.linear2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.norm2."),
    (r"^pooler\.dense\.", "pooler."),
]
# Head names -> ours (relative to BertForMaskedLM / BertForSequenceClassification).
_HF_BERT_HEAD_RULES = [
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.norm."),
    (r"^cls\.predictions\.bias$", "mlm_head.bias"),
    (r"^classifier\.", "classifier."),
]
# Entries that carry no information of their own: position/type-id buffers saved by old versions,
# and the MLM decoder, which Hugging Face ties to the word embeddings and to cls.predictions.bias
# (load_hf_bert checks that they really are equal to what they are tied to).
_HF_BERT_SKIP = re.compile(r"^(bert\.)?embeddings\.(position_ids|token_type_ids)$|^cls\.predictions\.decoder\.")


def load_hf_bert(model: BertModel | BertForMaskedLM | BertForSequenceClassification,
                 hf_state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy a Hugging Face BERT state dict into ``model``, in place.

    Accepted sources: ``transformers.BertModel`` into ``BertModel``; ``BertForMaskedLM`` into
    ``BertForMaskedLM``; ``BertForSequenceClassification`` into ``BertForSequenceClassification``.
    With ``strict=False`` any subset loads (e.g. a pre-trained ``BertModel`` into the ``bert`` part of
    ``BertForSequenceClassification``, the classifier keeping its initialisation).
    The MLM decoder weight must equal the word embeddings (they are tied here).

    Returns (missing, unexpected): our parameter names left untouched and Hugging Face names with no
    counterpart. With ``strict=True`` (default) either being non-empty raises ValueError listing them.
    """
    prefix = "" if isinstance(model, BertModel) else "bert."

    def rename(hf_key: str) -> str | None:
        backbone_key = hf_key.removeprefix("bert.")
        for pattern, replacement in _HF_BERT_BACKBONE_RULES:
            if re.match(pattern, backbone_key):
                return prefix + re.sub(pattern, replacement, backbone_key)
        for pattern, replacement in _HF_BERT_HEAD_RULES:
            if re.match(pattern, hf_key):
                return re.sub(pattern, replacement, hf_key)
        return None

    _check_tied_decoder(hf_state_dict)  # the MLM decoder must equal what this BERT ties it to
    kept = {k: v for k, v in hf_state_dict.items() if not _HF_BERT_SKIP.match(k)}
    return load_converted_state_dict(model, kept, rename, "hf_state_dict (Hugging Face BERT)", strict)


# --- helpers -------------------------------------------------------------------------------------

def _init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation: normal(0, 0.02) weights for linear and embedding layers, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


def _check_embedding_inputs(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, max_len: int) -> None:
    """input_ids: (B, T) integer, T <= max_len; token_type_ids: None or integer, shaped like input_ids."""
    _check_token_ids(input_ids, "input_ids")
    T = input_ids.size(1)
    if T > max_len:
        raise ValueError(f"input_ids has T = {T} tokens but the position table has max_len = {max_len}; "
                         f"shorten the input or build the model with a larger max_len")
    if token_type_ids is not None:
        _check_token_ids(token_type_ids, "token_type_ids", like=input_ids, like_name="input_ids")


def _check_mask_tokens_args(input_ids: torch.Tensor, mask_token_id: int, vocab_size: int,
                            mlm_probability: float) -> None:
    check_tensor(input_ids, "input_ids")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor of token ids; got {input_ids.dtype}")
    check_positive_int(vocab_size, "vocab_size")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id must be in [0, vocab_size = {vocab_size}); got {mask_token_id}")
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1]; got {mlm_probability}")


def _check_tied_decoder(hf_state_dict: Mapping[str, torch.Tensor]) -> None:
    """The checkpoint's MLM decoder weight and bias must equal the word embeddings and cls.predictions.bias."""
    tied = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
    for tied_key, source_key in tied.items():
        if tied_key in hf_state_dict and source_key in hf_state_dict and not torch.equal(
                hf_state_dict[tied_key].cpu(), hf_state_dict[source_key].cpu()):
            raise ValueError(f"hf_state_dict[{tied_key!r}] differs from hf_state_dict[{source_key!r}]; this BERT "
                             f"ties them, so an untied checkpoint (tie_word_embeddings=False) cannot be loaded")


def _check_token_ids(ids: torch.Tensor, name: str, like: torch.Tensor | None = None, like_name: str = "") -> None:
    check_ndim(ids, name, 2, "(B, T)")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of ids; got {ids.dtype}")
    if like is not None:
        if ids.shape != like.shape:
            raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}; got {tuple(ids.shape)}")
        check_same_device((like_name, like), (name, ids))


def _to_key_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Hugging Face (B, T) 1 = real token -> ours (B, 1, T) bool, True = may attend."""
    check_tensor(attention_mask, "attention_mask")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have shape (B, T) = {tuple(input_ids.shape)} like input_ids "
                         f"(1 = real token, 0 = padding); got {tuple(attention_mask.shape)}")
    check_same_device(("input_ids", input_ids), ("attention_mask", attention_mask))
    if attention_mask.dtype != torch.bool:  # checked without a GPU-to-CPU sync (see check_values)
        check_values(((attention_mask == 0) | (attention_mask == 1)).all(),
                     "attention_mask must hold 1 (real token) and 0 (padding) only; got other values "
                     "(an additive mask with -inf / -10000? pass the 0/1 mask instead)")
    return attention_mask.bool()[:, None, :]                                          # (B, 1, T)
