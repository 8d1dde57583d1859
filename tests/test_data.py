"""transformer_ref.data: vocabularies, toy tasks, corpus, images and batches.

References are independent of the code under test: torch's pad_sequence / flip / sort, a
words -> number parser written here, and geometric properties of the drawn shapes.
"""

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from transformer_ref import data
from transformer_ref.data import (BOS_ID, CLS_ID, EOS_ID, PAD_ID, SEP_ID, BatchIterator, Vocab,
                                  pad_sequences, split_target)

# ---------------------------------------------------------------------------------------------
# Vocab and padding
# ---------------------------------------------------------------------------------------------


def test_vocab_special_ids_are_fixed_and_first():
    v = Vocab(["b", "a", "b"])
    assert v.itos[:7] == ["<pad>", "<bos>", "<eos>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id, v.cls_id, v.sep_id, v.mask_id) == tuple(range(7))
    assert v.itos[7:] == ["b", "a"] and len(v) == 9
    assert v.special_ids == list(range(7))


def test_vocab_encode_decode_round_trip_and_unknown():
    v = Vocab("one two three".split())
    ids = v.encode("two three one", add_bos=True, add_eos=True)
    assert ids == [BOS_ID, 8, 9, 7, EOS_ID]
    assert v.decode(ids) == "two three one"
    assert v.decode(torch.tensor(ids + [PAD_ID, PAD_ID])) == "two three one"
    assert v.decode(ids, skip_special=False) == "<bos> two three one <eos>"
    assert v.decode([7, EOS_ID, 8]) == "one"                 # stops at <eos>
    assert v.encode(["one", "four"]) == [7, v.unk_id]


def test_vocab_bad_input():
    with pytest.raises(ValueError, match="tokens must be"):
        Vocab(["two words"])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 8\)"):
        Vocab(["x"]).decode([8])
    with pytest.raises(ValueError, match="ids must have shape"):
        Vocab(["x"]).decode(torch.zeros(2, 2, dtype=torch.long))


def test_pad_sequences_matches_torch_pad_sequence():
    seqs = [[5, 6, 7], [8], [9, 10]]
    expected = pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=0)
    out = pad_sequences(seqs)
    assert out.dtype == torch.long
    torch.testing.assert_close(out, expected)
    assert pad_sequences(seqs, pad_id=-1, length=5)[1].tolist() == [8, -1, -1, -1, -1]
    with pytest.raises(ValueError, match="length must be >= the longest sequence"):
        pad_sequences(seqs, length=2)
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_sequences([])


def test_encode_batch_pads_with_zero():
    v = Vocab("a b c".split())
    out = v.encode_batch(["a b c", "c"], add_eos=True)
    assert out.tolist() == [[7, 8, 9, EOS_ID], [9, EOS_ID, PAD_ID, PAD_ID]]


def test_split_target_shifts_by_one():
    tgt = torch.tensor([[BOS_ID, 7, 8, EOS_ID], [BOS_ID, 9, EOS_ID, PAD_ID]])
    tgt_in, labels = split_target(tgt)
    assert tgt_in.tolist() == [[BOS_ID, 7, 8], [BOS_ID, 9, EOS_ID]]
    assert labels.tolist() == [[7, 8, EOS_ID], [9, EOS_ID, PAD_ID]]
    with pytest.raises(ValueError, match="tgt must have shape"):
        split_target(tgt[0])
    with pytest.raises(ValueError, match="T >= 2"):
        split_target(tgt[:, :1])


# ---------------------------------------------------------------------------------------------
# Copy / reverse / sort
# ---------------------------------------------------------------------------------------------

def _rows(src, tgt):
    """Yield (source symbols, target symbols) per example, padding and <bos>/<eos> removed."""
    for s, t in zip(src, tgt):
        assert t[0] == BOS_ID
        n_t = int((t != PAD_ID).sum())
        assert t[n_t - 1] == EOS_ID and (t[n_t:] == PAD_ID).all()
        n_s = int((s != PAD_ID).sum())
        assert (s[n_s:] == PAD_ID).all()
        yield s[:n_s], t[1:n_t - 1]


@pytest.mark.parametrize("task, reference", [
    (data.copy_task, lambda s: s),
    (data.reverse_task, lambda s: torch.flip(s, dims=[0])),
    (data.sort_task, lambda s: torch.sort(s).values),
])
def test_sequence_tasks(task, reference):
    src, tgt = task(200, min_len=2, max_len=7, num_symbols=12, generator=0)
    assert src.dtype == tgt.dtype == torch.long
    assert src.shape == (200, 7) and tgt.shape == (200, 9)
    lengths = []
    for s, t in _rows(src, tgt):
        torch.testing.assert_close(t, reference(s))
        assert ((s >= 7) & (s < 7 + 12)).all()
        lengths.append(len(s))
    assert min(lengths) == 2 and max(lengths) == 7


def test_sort_task_sorts_symbols_alphabetically():
    src, tgt = data.sort_task(5, num_symbols=36, generator=1)
    for s, t in _rows(src, tgt):
        assert data.SEQUENCE_VOCAB.decode(t).split() == sorted(data.SEQUENCE_VOCAB.decode(s).split())


def test_sequence_tasks_are_deterministic():
    a = data.copy_task(50, generator=torch.Generator().manual_seed(3))
    b = data.copy_task(50, generator=3)
    c = data.copy_task(50, generator=4)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], c[0])


def test_sequence_task_bad_input():
    with pytest.raises(ValueError, match="min_len must be <= max_len"):
        data.copy_task(3, min_len=5, max_len=4)
    with pytest.raises(ValueError, match="num_symbols must be an int in"):
        data.copy_task(3, num_symbols=37)
    with pytest.raises(ValueError, match="num_examples must be a positive int"):
        data.reverse_task(0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        data.copy_task(3, generator="seed")


# ---------------------------------------------------------------------------------------------
# Translation: digits -> number words
# ---------------------------------------------------------------------------------------------

_VALUES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven "
                                      "twelve thirteen fourteen fifteen sixteen seventeen eighteen "
                                      "nineteen".split())}
_VALUES.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty "
                                                "ninety".split(), start=2)})


def _words_to_number(text):
    """An independent parser: accumulate small numbers, scale by hundred / thousand."""
    total, current = 0, 0
    for w in text.split():
        if w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = total + current * 1000, 0
        else:
            current += _VALUES[w]
    return total + current


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (10, "ten"), (13, "thirteen"), (20, "twenty"), (42, "forty two"),
    (100, "one hundred"), (140, "one hundred forty"), (101, "one hundred one"),
    (1000, "one thousand"), (20015, "twenty thousand fifteen"), (100000, "one hundred thousand"),
    (999999, "nine hundred ninety nine thousand nine hundred ninety nine"),
])
def test_number_to_words_examples(n, words):
    assert data.number_to_words(n) == words


def test_number_to_words_parses_back_everywhere():
    for n in list(range(2000)) + list(range(2000, 10**6, 997)):
        words = data.number_to_words(n)
        assert _words_to_number(words) == n, (n, words)
        assert all(w in data.NUMBER_WORD_VOCAB for w in words.split())


def test_number_to_words_bad_input():
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 1000000\)"):
        data.number_to_words(10**6)
    with pytest.raises(ValueError, match="n must be an int"):
        data.number_to_words(3.0)


def test_sample_numbers_digit_counts_are_uniform():
    numbers = data.sample_numbers(6000, max_digits=3, generator=0)
    counts = torch.bincount(torch.tensor([len(str(n)) for n in numbers]))[1:]
    assert counts.tolist() and len(counts) == 3
    assert (counts - 2000).abs().max() < 150       # ~3.4 standard deviations
    with pytest.raises(ValueError, match="max_digits must be an int in"):
        data.sample_numbers(3, max_digits=7)


def test_translation_task_pairs_match():
    src, tgt = data.translation_task(300, max_digits=6, generator=1)
    assert src.size(1) <= 6 and tgt.size(1) <= 11
    for s, t in _rows(src, tgt):
        n = int(data.DIGIT_VOCAB.decode(s).replace(" ", ""))
        assert _words_to_number(data.NUMBER_WORD_VOCAB.decode(t)) == n
        assert data.DIGIT_VOCAB.decode(s).replace(" ", "") == str(n)     # no leading zeros
    torch.testing.assert_close(data.translation_task(20, generator=5), data.translation_task(20, generator=5))


# ---------------------------------------------------------------------------------------------
# Text corpus for BERT
# ---------------------------------------------------------------------------------------------

def _topic_of(word):
    return {data.TOPIC_NAMES.index(t) for t, slots in data.TOPICS.items() for ws in slots.values()
            if word in ws}


def _sentiment_of(word):
    return {data.SENTIMENT_NAMES.index(s) for s, ws in data.SENTIMENTS.items() if word in ws}


def test_text_corpus_is_consistent():
    docs = data.text_corpus(100, 3, generator=0)
    assert len(docs) == 100 and all(len(d.sentences) == 3 for d in docs)
    for d in docs:
        for s in d.sentences:
            words = s.split()
            assert data.UNK_ID not in data.TEXT_VOCAB.encode(s)
            assert all(_topic_of(w) <= {d.topic} for w in words)
            assert all(_sentiment_of(w) <= {d.sentiment} for w in words)
            assert sum(bool(_sentiment_of(w)) for w in words) == 1       # one adjective each
            assert "a" not in [a for a, b in zip(words, words[1:]) if b[0] in "aeiou"]
    assert {d.topic for d in docs} == set(range(len(data.TOPIC_NAMES)))
    assert data.text_corpus(5, generator=2) == data.text_corpus(5, generator=2)


def test_encode_sentences_adds_cls_and_sep():
    ids = data.encode_sentences(["the cat fed the dog", "we ate"])
    v = data.TEXT_VOCAB
    assert ids.tolist() == [[CLS_ID, *v.encode("the cat fed the dog"), SEP_ID],
                            [CLS_ID, *v.encode("we ate"), SEP_ID, PAD_ID, PAD_ID, PAD_ID]]


def test_sentence_pairs_layout_and_labels():
    docs = data.text_corpus(50, 4, generator=1)
    follows = {(a, b) for d in docs for a, b in zip(d.sentences, d.sentences[1:])}
    ids, types, labels = data.sentence_pairs(docs, 400, generator=2)
    assert ids.shape == types.shape and labels.shape == (400,)
    assert 150 < int(labels.sum()) < 250
    for row, ty, label in zip(ids.tolist(), types.tolist(), labels.tolist()):
        n = sum(t != PAD_ID for t in row)
        assert row[0] == CLS_ID and row[n - 1] == SEP_ID and row.count(SEP_ID) == 2
        first_sep = row.index(SEP_ID)
        assert ty == [0] * (first_sep + 1) + [1] * (n - first_sep - 1) + [0] * (len(row) - n)
        a = data.TEXT_VOCAB.decode(row[1:first_sep])
        b = data.TEXT_VOCAB.decode(row[first_sep + 1:n - 1])
        if label == 0:
            assert (a, b) in follows
    with pytest.raises(ValueError, match="at least 2 documents"):
        data.sentence_pairs(docs[:1], 3)


@pytest.mark.parametrize("label, of_word", [("sentiment", _sentiment_of), ("topic", _topic_of)])
def test_text_classification_labels_follow_the_words(label, of_word):
    ids, labels = data.text_classification_task(200, label=label, generator=3)
    assert ids.size(0) == labels.size(0) == 200 and labels.dtype == torch.long
    for row, y in zip(ids, labels.tolist()):
        classes = set().union(*(of_word(w) for w in data.TEXT_VOCAB.decode(row).split()))
        assert classes == {y}
    with pytest.raises(ValueError, match='label must be "sentiment" or "topic"'):
        data.text_classification_task(3, label="length")


# ---------------------------------------------------------------------------------------------
# Shapes for ViT
# ---------------------------------------------------------------------------------------------

def test_shapes_dataset_types_and_determinism():
    x, y = data.shapes_dataset(64, image_size=32, channels=3, generator=0)
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.long
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(y.tolist()) == set(range(len(data.SHAPE_CLASSES)))
    torch.testing.assert_close(data.shapes_dataset(8, generator=1), data.shapes_dataset(8, generator=1))


def test_shapes_have_their_geometry():
    """Without noise: fill ratio of the bounding box tells the shapes apart (square 1, circle
    ~pi/4, triangle ~1/2, cross ~5/9, stripes ~3/5 with empty rows inside)."""
    x, y = data.shapes_dataset(300, image_size=28, noise_std=0.0, generator=4)
    expected = {"square": (1.0, 1.0), "circle": (0.68, 0.86), "triangle": (0.4, 0.66),
                "cross": (0.4, 0.7), "stripes": (0.45, 0.8)}
    for img, label in zip(x, y.tolist()):
        name = data.SHAPE_CLASSES[label]
        on = img[0] > 0
        rows, cols = on.any(1).nonzero().flatten(), on.any(0).nonzero().flatten()
        box = on[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        low, high = expected[name]
        assert low <= box.float().mean() <= high, (name, box.float().mean())
        row_filled = box.any(1)
        assert row_filled.all() == (name != "stripes"), name
        if name == "cross":
            assert not box[0, 0] and not box[-1, -1] and box[box.size(0) // 2].all()
        if name == "triangle":                     # narrow at the top, wide at the bottom
            assert box[0].sum() < box[-1].sum()


def test_shapes_dataset_bad_input():
    with pytest.raises(ValueError, match="channels must be 1"):
        data.shapes_dataset(2, channels=2)
    with pytest.raises(ValueError, match="image_size must be >= 8"):
        data.shapes_dataset(2, image_size=4)
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        data.shapes_dataset(2, noise_std=-1.0)


# ---------------------------------------------------------------------------------------------
# BatchIterator
# ---------------------------------------------------------------------------------------------

def test_batch_iterator_covers_every_row_once_per_pass():
    x = torch.arange(10)
    y = torch.arange(10) * 2
    it = BatchIterator(x, y, batch_size=4, generator=0)
    assert len(it) == 3
    passes = []
    for _ in range(2):
        batches = list(it)
        assert [len(b[0]) for b in batches] == [4, 4, 2]
        for bx, by in batches:
            torch.testing.assert_close(by, bx * 2)
        passes.append(torch.cat([b[0] for b in batches]))
        assert sorted(passes[-1].tolist()) == list(range(10))
    assert not torch.equal(passes[0], passes[1])          # reshuffled each pass
    again = torch.cat([b[0] for b in BatchIterator(x, y, batch_size=4, generator=0)])
    torch.testing.assert_close(again, passes[0])


def test_batch_iterator_no_shuffle_and_drop_last():
    it = BatchIterator(torch.arange(10), batch_size=4, shuffle=False, drop_last=True)
    assert len(it) == 2
    assert [b[0].tolist() for b in it] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batch_iterator_bad_input():
    with pytest.raises(ValueError, match=r"tensors\[1\] must have 3 rows"):
        BatchIterator(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        BatchIterator(torch.zeros(3), batch_size=0)
    with pytest.raises(TypeError, match=r"tensors\[0\] must be a torch.Tensor"):
        BatchIterator([1, 2], batch_size=1)
