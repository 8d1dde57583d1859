"""Generated data for every chapter: nothing is downloaded, everything is deterministic.

Each generator takes ``generator``: a ``torch.Generator``, an int seed, or None (torch's global
RNG, so ``transformer_ref.train.seed_everything`` makes it reproducible).

- ``Vocab``: a word-level vocabulary whose first ids are the special tokens
  <pad>=0, <bos>=1, <eos>=2, <unk>=3, [CLS]=4, [SEP]=5, [MASK]=6 (the same in every vocabulary).
- Sequence tasks for encoder-decoders (``Transformer``, ``Seq2Seq``): ``copy_task``,
  ``reverse_task``, ``sort_task`` and ``translation_task`` (digits to English number words,
  "1 4 0" -> "one hundred forty"). Each returns ``(src (N, S), tgt (N, T))`` LongTensors padded
  with 0; ``tgt`` is <bos> ... <eos>; ``split_target`` gives the decoder input and the labels.
- A templated English corpus for BERT: ``text_corpus`` (documents of sentences that share a topic
  and a sentiment), ``encode_sentences`` ([CLS] s [SEP]), ``sentence_pairs`` (next-sentence
  prediction) and ``text_classification_task`` (sentiment or topic labels).
- ``shapes_dataset``: images of squares, circles, triangles, crosses and stripes for ViT.
- ``BatchIterator``: mini-batches over aligned tensors, reshuffled on every pass.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch

from transformer_ref._checks import check_ndim, check_positive_int, check_same_rows

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, CLS, SEP, MASK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))

GeneratorLike = torch.Generator | int | None


class Vocab:
    """A word-level vocabulary: the special tokens first (<pad>=0, <bos>=1, <eos>=2, <unk>=3,
    [CLS]=4, [SEP]=5, [MASK]=6), then ``tokens`` in the order given (duplicates dropped).

    Text is split on whitespace; unknown words map to <unk>.
    """

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    cls_id, sep_id, mask_id = CLS_ID, SEP_ID, MASK_ID

    def __init__(self, tokens: Iterable[str]) -> None:
        words = [t for t in dict.fromkeys(tokens) if t not in SPECIAL_TOKENS]
        for t in words:
            if not isinstance(t, str) or not t or t.split() != [t]:
                raise ValueError(f"tokens must be non-empty strings without whitespace; got {t!r}")
        self.itos: list[str] = [*SPECIAL_TOKENS, *words]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, words={self.itos[len(SPECIAL_TOKENS):][:8]}...)"

    @property
    def special_ids(self) -> list[int]:
        """Ids of all special tokens (e.g. for ``bert.mask_tokens``: never mask these)."""
        return list(range(len(SPECIAL_TOKENS)))

    def encode(self, text: str | Sequence[str], add_bos: bool = False,
               add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (a whitespace-separated string or a list of tokens)."""
        tokens = text.split() if isinstance(text, str) else list(text)
        ids = [self.stoi.get(t, UNK_ID) for t in tokens]
        return [BOS_ID] * add_bos + ids + [EOS_ID] * add_eos

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """The space-joined tokens of a 1-D id sequence; with ``skip_special`` (default), special
        tokens are left out and decoding stops at the first <eos>."""
        if isinstance(ids, torch.Tensor):
            check_ndim(ids, "ids", 1, "(T,)")
            ids = ids.tolist()
        words = []
        for i in ids:
            if not 0 <= i < len(self):
                raise ValueError(f"ids must lie in [0, {len(self)}) for this vocabulary; got {i}")
            if skip_special and i == EOS_ID:
                break
            if not (skip_special and i < len(SPECIAL_TOKENS)):
                words.append(self.itos[i])
        return " ".join(words)

    def encode_batch(self, texts: Sequence[str | Sequence[str]], add_bos: bool = False,
                     add_eos: bool = False) -> torch.Tensor:
        """(B, T_max) LongTensor of encoded ``texts``, right-padded with <pad> = 0."""
        return pad_sequences([self.encode(t, add_bos, add_eos) for t in texts])


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID,
                  length: int | None = None) -> torch.Tensor:
    """Right-pad id lists into a (B, T) LongTensor; T = ``length`` or the longest sequence."""
    if len(sequences) == 0:
        raise ValueError("sequences must contain at least one sequence; got an empty list")
    longest = max(len(s) for s in sequences)
    if length is None:
        length = longest
    elif longest > length:
        raise ValueError(f"length must be >= the longest sequence ({longest}); got {length}")
    out = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def split_target(tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: tgt (B, T) = <bos> y_1 ... y_n <eos> <pad>...  ->
    (decoder input tgt[:, :-1], labels tgt[:, 1:]), both (B, T-1).
    Labels equal to the pad id are ignored by ``cross_entropy(..., ignore_index=pad_id)``."""
    check_ndim(tgt, "tgt", 2, "(B, T)")
    if tgt.size(1) < 2:
        raise ValueError(f"tgt must hold at least <bos> and <eos> (T >= 2); got shape {tuple(tgt.shape)}")
    return tgt[:, :-1], tgt[:, 1:]


def _torch_generator(generator: GeneratorLike) -> torch.Generator | None:
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    raise TypeError(f"generator must be a torch.Generator, an int seed or None; "
                    f"got {type(generator).__name__}")


def _python_rng(generator: GeneratorLike) -> random.Random:
    """A random.Random seeded from ``generator`` (fast scalar draws, still reproducible)."""
    seed = torch.randint(0, 2**62, (1,), generator=_torch_generator(generator)).item()
    return random.Random(seed)


# ----------------------------------------------------------------------------------------------
# Toy sequence tasks
# ----------------------------------------------------------------------------------------------

SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"
SEQUENCE_VOCAB = Vocab(SYMBOLS)
"""Vocabulary of copy/reverse/sort: the specials, then the digits and the letters a-z."""


def _random_sequences(num_examples: int, min_len: int, max_len: int, num_symbols: int,
                      generator: GeneratorLike) -> list[list[int]]:
    check_positive_int(num_examples, "num_examples")
    check_positive_int(min_len, "min_len")
    check_positive_int(max_len, "max_len")
    if min_len > max_len:
        raise ValueError(f"min_len must be <= max_len = {max_len}; got {min_len}")
    if isinstance(num_symbols, bool) or not isinstance(num_symbols, int) \
            or not 2 <= num_symbols <= len(SYMBOLS):
        raise ValueError(f"num_symbols must be an int in [2, {len(SYMBOLS)}]; got {num_symbols!r}")
    g = _torch_generator(generator)
    lengths = torch.randint(min_len, max_len + 1, (num_examples,), generator=g)
    first = len(SPECIAL_TOKENS)   # id of SYMBOLS[0]
    ids = torch.randint(first, first + num_symbols, (num_examples, max_len), generator=g)
    return [row[:n].tolist() for row, n in zip(ids, lengths.tolist())]


def _sequence_task(transform, num_examples: int, min_len: int, max_len: int, num_symbols: int,
                   generator: GeneratorLike) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = _random_sequences(num_examples, min_len, max_len, num_symbols, generator)
    src = pad_sequences(seqs)
    tgt = pad_sequences([[BOS_ID, *transform(s), EOS_ID] for s in seqs])
    return src, tgt


def copy_task(num_examples: int, min_len: int = 3, max_len: int = 10, num_symbols: int = 10,
              generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output = input. Sequences of ``min_len``..``max_len`` symbols drawn uniformly from the
    first ``num_symbols`` of ``SYMBOLS`` (vocabulary ``SEQUENCE_VOCAB``).
    Returns (src (N, max_len'), tgt (N, max_len' + 2)), padded with 0; tgt = <bos> ... <eos>."""
    return _sequence_task(lambda s: s, num_examples, min_len, max_len, num_symbols, generator)


def reverse_task(num_examples: int, min_len: int = 3, max_len: int = 10, num_symbols: int = 10,
                 generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output = input reversed; otherwise as ``copy_task``."""
    return _sequence_task(lambda s: s[::-1], num_examples, min_len, max_len, num_symbols, generator)


def sort_task(num_examples: int, min_len: int = 3, max_len: int = 10, num_symbols: int = 10,
              generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output = input sorted (digits before letters); otherwise as ``copy_task``."""
    return _sequence_task(sorted, num_examples, min_len, max_len, num_symbols, generator)


# Translation: digits -> English number words.
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
MAX_TRANSLATION_DIGITS = 6

DIGIT_VOCAB = Vocab("0123456789")
"""Source vocabulary of ``translation_task``: the specials, then the digits 0-9."""
NUMBER_WORD_VOCAB = Vocab([*_ONES, *_TEENS, *_TENS[2:], "hundred", "thousand"])
"""Target vocabulary of ``translation_task``: the specials, then the English number words."""


def _words_below_thousand(n: int) -> list[str]:
    hundreds, rest = divmod(n, 100)
    words = [_ONES[hundreds], "hundred"] if hundreds else []
    if 10 <= rest < 20:
        words.append(_TEENS[rest - 10])
    else:
        tens, ones = divmod(rest, 10)
        words += [_TENS[tens]] if tens else []
        words += [_ONES[ones]] if ones else []
    return words


def number_to_words(n: int) -> str:
    """English words of 0 <= n < 10**6, no "and", no hyphens:
    140 -> "one hundred forty", 20015 -> "twenty thousand fifteen", 0 -> "zero"."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 10**MAX_TRANSLATION_DIGITS:
        raise ValueError(f"n must be an int in [0, {10**MAX_TRANSLATION_DIGITS}); got {n!r}")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = _words_below_thousand(thousands) + ["thousand"] if thousands else []
    return " ".join(words + _words_below_thousand(rest))


def sample_numbers(num_examples: int, max_digits: int = 4,
                   generator: GeneratorLike = None) -> list[int]:
    """Integers whose digit count is uniform in 1..``max_digits`` (then uniform among the numbers
    with that many digits), so short numbers are as common as long ones."""
    check_positive_int(num_examples, "num_examples")
    if isinstance(max_digits, bool) or not isinstance(max_digits, int) \
            or not 1 <= max_digits <= MAX_TRANSLATION_DIGITS:
        raise ValueError(f"max_digits must be an int in [1, {MAX_TRANSLATION_DIGITS}]; got {max_digits!r}")
    g = _torch_generator(generator)
    digits = torch.randint(1, max_digits + 1, (num_examples,), generator=g)
    low = torch.where(digits == 1, 0, 10 ** (digits - 1))
    high = 10 ** digits                                      # exclusive
    u = torch.rand(num_examples, generator=g, dtype=torch.float64)
    return (low + (u * (high - low)).long()).tolist()


def encode_translation(numbers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(src (N, S), tgt (N, T)) for the given numbers: src = the digits ("1 4 0") in
    ``DIGIT_VOCAB``, tgt = <bos> words <eos> in ``NUMBER_WORD_VOCAB``, both padded with 0."""
    src = DIGIT_VOCAB.encode_batch([list(str(n)) for n in numbers])
    tgt = NUMBER_WORD_VOCAB.encode_batch([number_to_words(n) for n in numbers],
                                         add_bos=True, add_eos=True)
    return src, tgt


def translation_task(num_examples: int, max_digits: int = 4,
                     generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits to English number words, e.g. "2 0 0 1 5" -> "twenty thousand fifteen".

    Which word a digit becomes depends on its distance from the end of the number and on its
    neighbours (teens, skipped zeros), so the decoder must look at the right source positions.
    Numbers come from ``sample_numbers``. Returns ``encode_translation(numbers)``.
    """
    return encode_translation(sample_numbers(num_examples, max_digits, generator))


# ----------------------------------------------------------------------------------------------
# Text corpus for BERT
# ----------------------------------------------------------------------------------------------

TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "animals": {"noun": ("cat", "dog", "horse", "rabbit", "bird", "fox"),
                "verb": ("chased", "watched", "fed", "followed", "found"),
                "place": ("farm", "forest", "garden", "field")},
    "food": {"noun": ("soup", "bread", "cake", "apple", "pizza", "salad"),
             "verb": ("cooked", "ate", "baked", "tasted", "served"),
             "place": ("kitchen", "restaurant", "market", "cafe")},
    "sports": {"noun": ("ball", "team", "player", "coach", "match", "race"),
               "verb": ("won", "kicked", "threw", "lost", "coached"),
               "place": ("stadium", "park", "gym", "court")},
    "music": {"noun": ("song", "band", "guitar", "piano", "singer", "drum"),
              "verb": ("played", "heard", "wrote", "sang", "tuned"),
              "place": ("concert", "studio", "theater", "club")},
}
SENTIMENTS: dict[str, tuple[str, ...]] = {
    "negative": ("bad", "sad", "awful", "angry", "dull", "rude"),
    "positive": ("good", "happy", "lovely", "great", "bright", "kind"),
}
TEMPLATES: tuple[str, ...] = (
    "the {adj} {noun} {verb} the {noun}",
    "the {noun} {verb} the {adj} {noun} in the {place}",
    "a {adj} {noun} was {verb} in the {place}",
    "we {verb} the {adj} {noun}",
    "the {noun} in the {place} was {adj}",
    "it was a {adj} day at the {place}",
)
TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)
SENTIMENT_NAMES: tuple[str, ...] = tuple(SENTIMENTS)

_TEMPLATE_WORDS = [w for t in TEMPLATES for w in t.split() if not w.startswith("{")]
TEXT_VOCAB = Vocab([*dict.fromkeys(_TEMPLATE_WORDS), "an",
                    *(w for topic in TOPICS.values() for ws in topic.values() for w in ws),
                    *(w for ws in SENTIMENTS.values() for w in ws)])
"""Vocabulary of the BERT corpus: the specials, then every word the grammar can produce."""


class Document(NamedTuple):
    """Sentences that share one topic and one sentiment (indices into TOPIC_NAMES, SENTIMENT_NAMES)."""
    topic: int
    sentiment: int
    sentences: list[str]


def _sentence(rng: random.Random, topic: int, sentiment: int) -> str:
    words = TOPICS[TOPIC_NAMES[topic]]
    adjectives = SENTIMENTS[SENTIMENT_NAMES[sentiment]]
    slots = {"noun": words["noun"], "verb": words["verb"], "place": words["place"], "adj": adjectives}
    out = [rng.choice(slots[w[1:-1]]) if w.startswith("{") else w
           for w in rng.choice(TEMPLATES).split()]
    for i in range(len(out) - 1):   # "a angry day" -> "an angry day"
        if out[i] == "a" and out[i + 1][0] in "aeiou":
            out[i] = "an"
    return " ".join(out)


def text_corpus(num_documents: int = 500, sentences_per_document: int = 4,
                generator: GeneratorLike = None) -> list[Document]:
    """Documents of templated sentences, e.g. "the happy dog chased the rabbit".

    Each document draws a topic (which nouns, verbs and places appear) and a sentiment (which
    adjectives appear), then ``sentences_per_document`` sentences from ``TEMPLATES``. A masked
    word is therefore predictable from its template and from the other words of its sentence.
    All words are in ``TEXT_VOCAB``.
    """
    check_positive_int(num_documents, "num_documents")
    check_positive_int(sentences_per_document, "sentences_per_document")
    rng = _python_rng(generator)
    docs = []
    for _ in range(num_documents):
        topic, sentiment = rng.randrange(len(TOPICS)), rng.randrange(len(SENTIMENTS))
        sentences = [_sentence(rng, topic, sentiment) for _ in range(sentences_per_document)]
        docs.append(Document(topic, sentiment, sentences))
    return docs


def encode_sentences(sentences: Sequence[str], vocab: Vocab = TEXT_VOCAB) -> torch.Tensor:
    """(N, T) input ids of "[CLS] sentence [SEP]", right-padded with <pad> = 0."""
    return pad_sequences([[CLS_ID, *vocab.encode(s), SEP_ID] for s in sentences])


def sentence_pairs(documents: Sequence[Document], num_pairs: int, vocab: Vocab = TEXT_VOCAB,
                   generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-sentence-prediction examples "[CLS] A [SEP] B [SEP]" (Devlin et al. 2019).

    Half of the pairs take B as the sentence after A in the same document (label 0, "is next",
    the Hugging Face convention), half take B from another document (label 1, "random").
    Returns (input_ids (N, T), token_type_ids (N, T): 0 for [CLS] A [SEP], 1 for B [SEP] and 0
    on padding, labels (N,)).
    """
    check_positive_int(num_pairs, "num_pairs")
    if len(documents) < 2 or any(len(d.sentences) < 2 for d in documents):
        raise ValueError("documents must hold at least 2 documents of at least 2 sentences each; "
                         f"got {len(documents)} documents")
    rng = _python_rng(generator)
    ids, types, labels = [], [], []
    for _ in range(num_pairs):
        d = rng.randrange(len(documents))
        i = rng.randrange(len(documents[d].sentences) - 1)
        label = rng.randrange(2)
        if label == 0:
            b = documents[d].sentences[i + 1]
        else:
            other = rng.randrange(len(documents) - 1)
            other += other >= d                                  # any document but d
            b = rng.choice(documents[other].sentences)
        a_ids = [CLS_ID, *vocab.encode(documents[d].sentences[i]), SEP_ID]
        b_ids = [*vocab.encode(b), SEP_ID]
        ids.append(a_ids + b_ids)
        types.append([0] * len(a_ids) + [1] * len(b_ids))
        labels.append(label)
    return pad_sequences(ids), pad_sequences(types, pad_id=0), torch.tensor(labels)


def text_classification_task(num_examples: int, label: str = "sentiment",
                             generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Single sentences from ``text_corpus`` labelled by their ``label`` = "sentiment"
    (0 negative, 1 positive) or "topic" (index into TOPIC_NAMES), for fine-tuning.
    Returns (input_ids (N, T) of "[CLS] sentence [SEP]", labels (N,))."""
    if label not in ("sentiment", "topic"):
        raise ValueError(f'label must be "sentiment" or "topic"; got {label!r}')
    docs = text_corpus(num_examples, 1, generator)
    labels = torch.tensor([d.sentiment if label == "sentiment" else d.topic for d in docs])
    return encode_sentences([d.sentences[0] for d in docs]), labels


# ----------------------------------------------------------------------------------------------
# Images for ViT
# ----------------------------------------------------------------------------------------------

SHAPE_CLASSES: tuple[str, ...] = ("square", "circle", "triangle", "cross", "stripes")


def shapes_dataset(num_images: int, image_size: int = 28, channels: int = 1,
                   noise_std: float = 0.1,
                   generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one filled shape each, class index into ``SHAPE_CLASSES``: square, circle,
    triangle (apex up), cross (a plus sign) or stripes (a square of horizontal bars).

    Shape size (half-width 20-35 % of ``image_size``), position, brightness (or colour when
    ``channels`` = 3) are random; Gaussian noise of ``noise_std`` is added, then clamped to [0, 1].
    Returns (images (N, C, H, W) float32, labels (N,) long), classes balanced in expectation.
    """
    check_positive_int(num_images, "num_images")
    check_positive_int(image_size, "image_size")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 so the shapes stay recognisable; got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB); got {channels!r}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0; got {noise_std}")
    g = _torch_generator(generator)
    n = num_images
    labels = torch.randint(0, len(SHAPE_CLASSES), (n,), generator=g)
    half = image_size * (0.2 + 0.15 * torch.rand(n, 1, 1, generator=g))     # (N, 1, 1)
    cx = half + (image_size - 1 - 2 * half) * torch.rand(n, 1, 1, generator=g)
    cy = half + (image_size - 1 - 2 * half) * torch.rand(n, 1, 1, generator=g)
    coords = torch.arange(image_size, dtype=torch.float32)
    dx = coords.view(1, 1, -1) - cx                                          # (N, 1, W)
    dy = coords.view(1, -1, 1) - cy                                          # (N, H, 1)
    box = (dx.abs() <= half) & (dy.abs() <= half)                            # (N, H, W)
    bar = half / 3
    period = (2 * half / 5).clamp(min=2.0)                                   # 5 bands: 3 bars
    masks = torch.stack([
        box,                                                                 # square
        dx**2 + dy**2 <= half**2,                                            # circle
        (dy.abs() <= half) & (dx.abs() <= (dy + half) / 2),                  # triangle
        ((dx.abs() <= bar) & (dy.abs() <= half)) | ((dy.abs() <= bar) & (dx.abs() <= half)),
        box & (torch.div(dy + half, period, rounding_mode="floor") % 2 == 0),   # stripes
    ], dim=1)                                                                # (N, 5, H, W)
    shape = masks[torch.arange(n), labels].unsqueeze(1).float()              # (N, 1, H, W)
    colour = 0.5 + 0.5 * torch.rand(n, channels, 1, 1, generator=g)          # (N, C, 1, 1)
    images = shape * colour + noise_std * torch.randn(n, channels, image_size, image_size, generator=g)
    return images.clamp(0.0, 1.0), labels


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------

class BatchIterator:
    """Mini-batches over tensors that share their first dimension.

    ``for batch in BatchIterator(src, tgt, batch_size=32, generator=g)`` yields tuples
    ``(src[idx], tgt[idx])``; each pass draws a new permutation from ``generator`` when
    ``shuffle`` (so two iterators built with equally seeded generators give equal batches).
    ``len()`` is the number of batches per pass.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, generator: GeneratorLike = None) -> None:
        check_same_rows(tensors, "BatchIterator")
        self.tensors = tensors
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = _torch_generator(generator)

    def __len__(self) -> int:
        n = self.tensors[0].size(0)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.tensors[0].size(0)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield tuple(t[idx.to(t.device)] for t in self.tensors)
