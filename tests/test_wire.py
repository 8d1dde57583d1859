"""grader.sandbox.wire: what comes out of the sandbox is read as hostile data.

Every legal outcome survives the round trip exactly (dtype, shape, values, tuple vs list); every forged frame
(a pickle, shared references, nesting, compression, lying safetensors headers, too many or too large parts)
is refused with a ValueError that names the limit, within a time and a memory bound, before the host
allocates what the frame declares.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_wire.py
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import resource
import struct
import time
import tracemalloc
import zipfile

import pytest
import torch
from safetensors.torch import save

from grader.checks.results import Unsent
from grader.execution import load_outcomes
from grader.sandbox import wire

SECONDS = 1.0          # what refusing one forged frame may take
CHECK_SECONDS = 20.0   # a whole check (every case, watched) on a shared-references value: unbounded, it never ends
PYTHON_BYTES = 8 << 20  # Python memory (tracemalloc's peak) it may allocate beyond the frame's own size
RSS_BYTES = 64 << 20   # growth of the process's peak RSS (torch's allocations are not seen by tracemalloc)


def outcome(value=None, error=None, mutated=(), shortcut=None, wiring=None) -> dict:
    return {"value": value, "error": error, "mutated": list(mutated), "shortcut": shortcut, "wiring": wiring}


def frame(header, blob: bytes = b"") -> bytes:
    """A forged frame: `header` (JSON-able, or raw bytes) and a raw tensor table."""
    data = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data + blob


def table(entries: dict, data: bytes) -> bytes:
    """A forged safetensors table: any header, any data."""
    head = json.dumps(entries).encode()
    return len(head).to_bytes(8, "little") + head + data


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and a.device == b.device and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


# ----------------------------------------------------------------------------- round trips
BASE = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7
LEGAL = {
    "float32": BASE,
    "float64": BASE.double(),
    "float16": BASE.half(),
    "bfloat16": BASE.bfloat16(),
    "bool": BASE > 1,
    "int64": torch.arange(-5, 5),
    "int32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    "int8 and uint8": (torch.arange(-3, 3, dtype=torch.int8), torch.arange(6, dtype=torch.uint8)),
    "0-d": torch.tensor(3.5, dtype=torch.float64),
    "empty": torch.empty(0, 3),
    "empty with a huge other dimension": torch.empty(0, 2 ** 31),
    "non-contiguous (transposed)": BASE.transpose(0, 2),
    "non-contiguous (strided slice)": BASE[:, ::2, 1::2],
    "expanded": torch.ones(1, 3).expand(4, 3),
    "tuple of outputs": (BASE, BASE.sum(-1), BASE > 0),
    "nested list and tuple": [(1, 2.5), [True, None, "text"], ()],
    "numbers": (0, -2 ** 63, 2 ** 63 - 1, 1e-300, float("inf"), float("-inf"), float("nan")),
    "None": None,
    "a string": "é\u2028\ud800 (a lone surrogate)",
}


@pytest.mark.parametrize("name", list(LEGAL))
def test_every_legal_outcome_round_trips(name):
    value = LEGAL[name]
    outcomes = [outcome(value), outcome(error="boom", mutated=["q", "k"]), outcome(value, shortcut="used F.sdpa")]
    back = wire.decode(wire.encode("f", outcomes), "f")
    assert same(back[0]["value"], value)
    assert back[1] == outcome(error="boom", mutated=["q", "k"])
    assert back[2]["shortcut"] == "used F.sdpa" and same(back[2]["value"], value)
    for o in back:
        for t in _tensors(o["value"]):
            assert type(t) is torch.Tensor and t.is_contiguous()


def test_a_layers_wiring_record_travels_as_text_and_a_frame_without_it_is_read():
    back = wire.decode(wire.encode("f", [outcome(1.0, wiring='{"calls": [], "output": "x"}')]), "f")
    assert back[0]["wiring"] == '{"calls": [], "output": "x"}'
    old = {"item": "f", "outcomes": [{"value": None, "error": None, "mutated": [], "shortcut": None}]}
    assert wire.decode(frame(old), "f")[0]["wiring"] is None
    long = wire.decode(wire.encode("f", [outcome(wiring="w" * 10**6)]), "f")[0]["wiring"]
    assert len(long) <= wire.MAX_STRING + 40   # cut to the wire's longest string
    with pytest.raises(ValueError, match="wiring"):
        wire.decode(frame({"item": "f", "outcomes": [{**outcome(), "wiring": ["not", "text"]}]}), "f")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def test_load_outcomes_makes_outcomes_and_repeats_one_error_for_every_case():
    (out,) = load_outcomes(wire.encode("f", [outcome((torch.ones(2), 3.0))]), "f", 1)
    assert type(out.value[0]) is torch.Tensor and out.value[1] == 3.0
    outs = load_outcomes(wire.encode("f", [outcome(error="`f` is not defined")]), "f", 3)
    assert [o.error for o in outs] == ["`f` is not defined"] * 3
    with pytest.raises(ValueError, match="2 outcomes for 3 cases"):
        load_outcomes(wire.encode("f", [outcome(1), outcome(2)]), "f", 3)
    with pytest.raises(ValueError, match="another item"):
        load_outcomes(wire.encode("g", [outcome(1)]), "f", 1)


class Liar(torch.Tensor):
    """A tensor subclass (a student's could answer True to every comparison)."""


class Meta(type):
    @property
    def __module__(cls):   # type(value).__module__ would run student code on the harness side, after the watch
        raise RuntimeError("ran")


class Odd(metaclass=Meta):
    pass


def _nested(n: int, depth: int):
    """A list of n references to one list of n references ..., `depth` levels: n**depth leaves, n*depth objects."""
    value = [None] * n
    for _ in range(depth - 1):
        value = [value] * n
    return value


@pytest.mark.parametrize("value, says", [
    (torch.ones(2).as_subclass(Liar), "Liar object"),
    (Odd(), "Odd object"),
    (torch.ones(2, dtype=torch.complex64), "dtype torch.complex64"),
    (torch.ones(2).to_sparse(), "sparse"),
    (list(range(65)), "list of 65, too long"),
    ((((((((1,),),),),),),), "tuple of 1, too long or too deeply nested"),
    (2 ** 64, "int of 65 bits"),
    (_nested(1000, 5), "list of 1000, too long"),      # 10**15 leaves by shared references
    (_nested(64, 5), "over the grader's limit"),
    (_nested(64, 2) + _nested(64, 2), "list of 128"),
], ids=["tensor subclass", "metaclass", "complex", "sparse", "long list", "deep tuple", "long int",
        "shared references", "shared references 64**5", "too many values"])
def test_the_encoder_describes_what_the_host_would_refuse(value, says):
    start = time.perf_counter()
    (back,) = wire.decode(wire.encode("f", [outcome(value)]), "f")
    assert time.perf_counter() - start < SECONDS
    described = back["value"]
    while isinstance(described, tuple):   # the deep tuple is cut where it gets too deep
        (described,) = described
    assert type(described) is Unsent and says in described.what, back["value"]


def test_a_meta_tensor_comes_back_as_its_shape_and_dtype():
    """The checks' meta cases return tensors without values: only the shape, dtype and device travel."""
    value = (torch.empty(3, 1, 5, dtype=torch.bool, device="meta"), torch.empty(0, 2 ** 31, device="meta"))
    (back,) = wire.decode(wire.encode("f", [outcome(value)]), "f")
    for sent, got in zip(value, back["value"]):
        assert got.is_meta and got.shape == sent.shape and got.dtype == sent.dtype


@pytest.mark.parametrize("node", [{"meta": [2] * 9, "dtype": "F32"}, {"meta": [2 ** 40], "dtype": "F32"},
                                  {"meta": [2], "dtype": "C64"}, {"meta": "2", "dtype": "F32"},
                                  {"meta": [2.0], "dtype": "F32"}])
def test_a_forged_meta_tensor_is_refused(node):
    header = json.dumps({"item": "f", "outcomes": [{"value": node, "error": None, "mutated": [], "shortcut": None}]})
    with pytest.raises(ValueError, match="a meta tensor whose"):
        wire.decode(struct.pack(">I", len(header)) + header.encode(), "f")


def test_the_encoder_keeps_the_node_budget_for_every_outcome():
    """Many outcomes of many values each: the frame is still accepted (later values become placeholders)."""
    value = [list(range(60)) for _ in range(60)]   # 3661 values
    back = wire.decode(wire.encode("f", [outcome(value) for _ in range(5)]), "f")
    assert back[0]["value"] == value and all(isinstance(o["value"], Unsent) for o in back[1:])


def test_the_encoder_cuts_long_texts_to_fit_the_header():
    back = wire.decode(wire.encode("f", [outcome(error="x" * 10 ** 6, mutated=["m" * 500] * 40, shortcut="s" * 5000)
                                         for _ in range(250)]), "f")
    assert len(back) == 250 and all(len(o["error"]) <= wire.MAX_STRING for o in back)
    assert all(len(o["mutated"]) == wire.MAX_MUTATED and len(o["mutated"][0]) == wire.MAX_NAME for o in back)


def test_a_tensor_too_large_for_a_frame_is_described_not_sent():
    big = torch.zeros(wire.MAX_FRAME // 4 + 1)
    data = wire.encode("f", [outcome((big, torch.ones(2)))])
    assert len(data) < 1 << 20
    (back,) = wire.decode(data, "f")
    assert "past the grader's limits" in back["value"][0].what and torch.equal(back["value"][1], torch.ones(2))


# ----------------------------------------------------------------------------- forged frames
def _pickle_of_shared_references(n: int = 1000, depth: int = 5) -> bytes:
    buffer = io.BytesIO()
    torch.save({"item": "f", "outcomes": [outcome(_nested(n, depth))]}, buffer)
    return buffer.getvalue()


def _zip_bomb() -> bytes:
    """A zip (what torch.save writes) with one DEFLATE record of 256 MiB of zeros: ~250 KB on the wire."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z, z.open("archive/data/0", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(256):
            f.write(chunk)
    return buffer.getvalue()


def _deep_json(depth: int = 80_000) -> bytes:
    return b'{"item": "f", "outcomes": [{"value": ' + b'{"list": [' * depth + b"]}" * depth + \
        b', "error": null, "mutated": [], "shortcut": null}]}'



F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
ONE = {"item": "f", "outcomes": [outcome({"tensor": 0, "device": "cpu"})]}
FORGED = {
    "a torch.save pickle of shared references (N**5)": (_pickle_of_shared_references(), "outcome header of"),
    "the same pickle behind a right length": (frame(_pickle_of_shared_references()), "not UTF-8|not valid JSON"),
    "a pickle with a reduce (code)": (frame(pickle.dumps(print)), "not UTF-8|not valid JSON"),
    "a zip with a deflate bomb": (_zip_bomb(), "over the limit"),
    "a gzip'd header": (frame(gzip.compress(json.dumps(ONE).encode() * 1000)), "not UTF-8|not valid JSON"),
    "JSON nested 80000 deep": (frame(_deep_json()), "nested too deeply"),
    "values nested 6 deep": (frame({"item": "f", "outcomes": [outcome(json.loads(
        '{"list": [' * 6 + "]}" * 6))]}), "nested more than 5 deep"),
    "a list of 65": (frame({"item": "f", "outcomes": [outcome({"list": [0] * 65})]}), "list of 65 items"),
    "5000 values": (frame({"item": "f", "outcomes": [outcome({"list": [0] * 50}) for _ in range(100)]}),
                    "more than 4096 values"),
    "300 outcomes": (frame({"item": "f", "outcomes": [outcome() for _ in range(300)]}), "300 outcomes"),
    "an error of a million characters": (frame({"item": "f", "outcomes": [outcome(error="x" * 10 ** 6)]}),
                                         "over the limit of 1048576|1000000 characters"),
    "an error of 3000 characters": (frame({"item": "f", "outcomes": [outcome(error="x" * 3000)]}),
                                    "error of 3000 characters"),
    "a long mutated name": (frame({"item": "f", "outcomes": [outcome(mutated=["m" * 200])]}), "200 characters"),
    "an int of 5000 digits": (frame(b'{"item": "f", "outcomes": [{"value": ' + b"9" * 5000 +
                                    b', "error": null, "mutated": [], "shortcut": null}]}'), "int of 5000 digits"),
    "a header longer than the frame": (struct.pack(">I", 1000) + b"{}", "longer than its frame"),
    "a header over the limit": (struct.pack(">I", wire.MAX_HEADER + 1) + bytes(10), "over the limit"),
    "an unknown key": (frame({"item": "f", "outcomes": [{**outcome(), "code": "print(1)"}]}), "not {value"),
    "a tensor referred to twice": (frame({"item": "f", "outcomes": [outcome({"tuple": [
        {"tensor": 0, "device": "cpu"}, {"tensor": 0, "device": "cpu"}]})]},
        table({"0": F32}, bytes(8))), "referred to twice"),
    "a tensor no one refers to": (frame({"item": "f", "outcomes": [outcome()]}, table({"0": F32}, bytes(8))),
                                  "1 tensors that no outcome"),
    "a reference to a missing tensor": (frame(ONE), "not in the frame"),
    "a huge declared shape": (frame(ONE, table({"0": {"dtype": "F32", "shape": [2 ** 31] * 8,
                                                     "data_offsets": [0, 8]}}, bytes(8))), "more than 67108864"),
    "a shape of 1e12 elements in one dimension": (frame(ONE, table({"0": {"dtype": "F64", "shape": [10 ** 12],
                                                                          "data_offsets": [0, 8]}}, bytes(8))),
                                                  "a shape that is not"),
    "negative sizes": (frame(ONE, table({"0": {"dtype": "F32", "shape": [-2], "data_offsets": [8, 0]}}, bytes(8))),
                       "a shape that is not"),
    "offsets past the data": (frame(ONE, table({"0": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                               bytes(8))), "cover 16 of its 8"),
    "overlapping offsets": (frame({"item": "f", "outcomes": [outcome({"tuple": [{"tensor": 0, "device": "cpu"},
                                                                                {"tensor": 1, "device": "cpu"}]})]},
                                  table({"0": F32, "1": F32}, bytes(16))), "overlap"),
    "a gap in the offsets": (frame(ONE, table({"0": {**F32, "data_offsets": [8, 16]}}, bytes(16))), "gap"),
    "offsets that do not match the shape": (frame(ONE, table({"0": {**F32, "data_offsets": [0, 4]}}, bytes(4))),
                                            "4 bytes for a shape that holds 8"),
    "a tensor table header over the limit": (frame(ONE, (10 ** 9).to_bytes(8, "little") + bytes(16)),
                                             "tensor table header of 1000000000 bytes"),
    "2000 tensors": (frame(ONE, table({str(k): {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
                                       for k in range(2000)}, b"")), "2000 tensors"),
    "a float8 dtype": (frame(ONE, table({"0": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, bytes(8))),
                       "dtype 'F8_E4M3'"),
    "a complex dtype": (frame(ONE, table({"0": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8))),
                        "dtype 'C64'"),
    "safetensors metadata": (frame(ONE, table({"0": F32, "__metadata__": {"a": "b"}}, bytes(8))), "named other"),
    "a tensor on another device": (frame({"item": "f", "outcomes": [outcome({"tensor": 0, "device": "file:/etc"})]},
                                         table({"0": F32}, bytes(8))), "neither cpu nor cuda"),
    "a frame over the limit": (bytes(wire.MAX_FRAME + 1), "over the limit of 67108864"),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_a_forged_frame_is_refused_quickly_and_small(name):
    payload, says = FORGED[name]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=says):
            wire.decode(payload, "f")
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < SECONDS, f"{name}: {seconds:.2f} s"
    assert peak < len(payload) + PYTHON_BYTES, f"{name}: {peak / 2**20:.1f} MiB of Python memory"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss < RSS_BYTES, name


def test_the_n5_frame_would_hang_the_old_reader():
    """The attack, shown: the old reader's check walks the N**5 leaves (here N = 40: 10**8 leaves, minutes)."""
    data = torch.load(io.BytesIO(_pickle_of_shared_references(40, 5)), weights_only=True)  # loads: 200 objects
    leaves, stack = 0, [data["outcomes"][0]["value"]]
    start = time.perf_counter()
    while stack and time.perf_counter() - start < 0.5:   # a walk like execution._plain's, stopped at 0.5 s
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        else:
            leaves += 1
    assert stack and leaves < 40 ** 5, "the walk finished: the attack no longer shows"


@pytest.mark.parametrize("payload, says", [
    (json.dumps({"cell": "a", "error": "x" * 100_000}).encode(), "event of"),
    (json.dumps({"cell": "a", "error": "x" * 3000}).encode(), "3000 characters"),
    (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
    (json.dumps({"cell": "a", "extra": [[]] * 1000}).encode(), "not {cell"),
    (json.dumps({"cell": ["a"]}).encode(), "not {cell"),
    (b"\xff", "not UTF-8|not valid JSON"),
])
def test_a_forged_event_is_refused(payload, says):
    with pytest.raises(ValueError, match=says):
        wire.decode_event(payload)


def test_the_harness_events_are_accepted():
    for event in ({"cell": "imports"}, {"item": "f"}, {"cell": "c", "error": "é" * 2000}, {"cell": "c", "error": None},
                  {"done": True}):
        assert wire.decode_event(json.dumps(event).encode()) == event


# ----------------------------------------------------------------------------- amplification where values are made
def _amplify(q, k, v, mask=None):
    """A legal return value of 64**5 leaves by shared references (10**9 parts to walk, 65 lists in memory)."""
    return _nested(64, 5), _nested(64, 5)


def test_a_check_on_a_value_of_shared_references_answers_at_once():
    """In the student's kernel (no sandbox, no wire) the check walks what the function returned: bounded too."""
    from grader.checks.attention import check_scaled_dot_product_attention
    from grader.checks.report import CheckFailed

    start = time.perf_counter()
    with pytest.raises(CheckFailed, match="expected a torch.Tensor"):
        check_scaled_dot_product_attention(_amplify)
    assert time.perf_counter() - start < CHECK_SECONDS
