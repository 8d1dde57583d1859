"""The wire format of what comes out of the sandbox: one module, used by the harness (encode) and the host (decode).

Everything the host reads from the sandbox may have been written by student code (it shares the harness's
process and its report channel), so the format can express only what the grader accepts, and nothing that
costs the host more than the frame's own size to read:

    frame    = u32 (big-endian) n | n bytes of JSON: the outcome tree | safetensors: the tensors it refers to
    outcome  = {"value": V, "error": str | null, "mutated": [str], "shortcut": str | null, "wiring": str | null}
    V        = null | true | false | int (64-bit) | float | str | {"tensor": k, "device": "cpu" | "cuda[:i]"}
               | {"list": [V, ...]} | {"tuple": [V, ...]}
               | {"meta": [int, ...], "dtype": str}   (a meta tensor: a shape and a dtype, no values)
               | {"unsent": str}   (a value the harness could not send, as what it was: read as Unsent)

JSON has no references (a tree of N nodes is N nodes of text), no compression and no code; safetensors is
a flat table of raw buffers (dtype, shape, offsets) with the same three absences. Each tensor is referred to
exactly once. Before anything is allocated, `decode` checks the frame size, the JSON header's size and
nesting, the number of nodes, strings and tensors, each tensor's dtype, shape and byte size, and that the
safetensors offsets tile its data exactly; any violation is a ValueError that names the limit. Decoding is
linear in the frame's size. `decode_event` does the same for the small JSON events (a step starts or ends).
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import torch

from grader.checks.results import Unsent

# ----------------------------------------------------------------------------- the limits, and why
MAX_FRAME = 64 * 1024 * 1024   # the channel's own frame limit (grader.sandbox.channel.MAX_FRAME): the bytes read at all
MAX_HEADER = 1024 * 1024       # JSON of the outcome tree: ~40 cases x (2000-character error + shortcut) is ~200 KB
MAX_DEPTH = 6                  # list/tuple nesting of a value: outputs are a tensor or a tuple of them (the harness
                               #   cuts at 5); JSON nesting may add 3 (frame, outcome list, outcome) on top
MAX_LENGTH = 64                # items of one list or tuple (a module's outputs; the harness cuts at 64)
MAX_NODES = 4096               # values in one frame, all outcomes together (~40 cases x a few outputs each)
MAX_OUTCOMES = 256             # outcomes in one frame (an item has a few dozen cases)
MAX_STRING = 2000              # characters of one string (the harness cuts error texts at 2000)
MAX_MUTATED = 16               # names of changed inputs per outcome (a function has a few arguments)
MAX_NAME = 100                 # characters of such a name, and of the item's name
MAX_TENSORS = 1024             # tensors in one frame (MAX_NODES bounds it anyway; a safetensors header stays small)
MAX_DIMS = 8                   # dimensions of one tensor (the course's largest is 4)
MAX_DIM = 2 ** 31              # size of one dimension (an empty tensor may declare any other dimension)
MAX_TENSOR_BYTES = MAX_FRAME   # all tensors together: no more than the frame holds (no compression, so equal)
MAX_ST_HEADER = 256 * 1024     # the safetensors header: ~100 bytes of JSON per tensor x MAX_TENSORS
MAX_EVENT = 64 * 1024          # one event frame (a cell id, a 2000-character error as \\u escapes)
MAX_INT = 2 ** 63              # ints are 64-bit: a longer one would cost the host quadratic time to read

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
          "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8,
          "BOOL": torch.bool}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_DEVICE = re.compile(r"cpu|cuda(:\d{1,2})?")
_LENGTH = struct.Struct(">I")
_KEYS = {"value", "error", "mutated", "shortcut", "wiring"}   # wiring: a layer's record (grader.checks.wiring)


# ----------------------------------------------------------------------------- harness side
class _Encoder:
    """Turns outcome values into the JSON tree and the tensors table, cutting what the host would refuse
    (each cut value becomes an {"unsent": what it was} node, read as Unsent: the host's comparison fails it)."""

    def __init__(self, cap: int) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.nodes = self.bytes = 0
        self.cap = cap            # characters of one string

    def outcome_value(self, value: Any, budget: int) -> Any:
        """`value`, or a placeholder when it takes more than `budget` nodes (rolled back: one node)."""
        nodes, tensors, nbytes = self.nodes, len(self.tensors), self.bytes
        tree = self.value(value, 0, nodes + budget)
        if self.nodes <= nodes + budget:
            return tree
        for k in range(tensors, len(self.tensors)):
            del self.tensors[str(k)]
        self.nodes, self.bytes = nodes + 1, nbytes
        return _unsent(f"a value of more than {budget} parts, over the grader's limit")

    def value(self, value: Any, depth: int, limit: int) -> Any:
        self.nodes += 1
        if self.nodes > limit:
            return None
        if type(value) is torch.Tensor:
            nbytes = value.numel() * value.element_size()
            if value.dtype not in _NAMES or value.layout is not torch.strided:
                return _unsent(f"a {value.layout} tensor of dtype {value.dtype} (the grader reads dense tensors "
                               f"of {', '.join(str(d)[6:] for d in _NAMES)})")
            if value.is_meta:   # a shape, a dtype and a device, no values (the checks' meta cases)
                if value.dim() > MAX_DIMS:
                    return _unsent(f"a meta tensor of {value.dim()} dimensions, past the grader's limits")
                return {"meta": list(value.shape), "dtype": _NAMES[value.dtype]}
            if value.dim() > MAX_DIMS or len(self.tensors) >= MAX_TENSORS or self.bytes + nbytes > _ENCODE_BYTES:
                return _unsent(f"a tensor of shape {tuple(value.shape)}, past the grader's limits")
            key, self.bytes = str(len(self.tensors)), self.bytes + nbytes
            self.tensors[key] = value.detach().to("cpu", copy=True).contiguous()
            return {"tensor": int(key), "device": str(value.device)}
        if value is None or type(value) in (bool, float):
            return value
        if type(value) is int:
            return value if -MAX_INT <= value < MAX_INT else _unsent(f"an int of {value.bit_length()} bits")
        if type(value) is str:
            return _short(value, self.cap)
        if type(value) is Unsent:   # cut already where it was made (grader.checks.run.detached)
            return _unsent(value.what)
        if type(value) in (tuple, list):
            if depth >= MAX_DEPTH - 1 or len(value) > MAX_LENGTH or self.nodes + len(value) > limit:
                return _unsent(f"a {type(value).__name__} of {len(value)}, too long or too deeply nested for the grader")
            return {type(value).__name__: [self.value(v, depth + 1, limit) for v in value]}
        return _unsent(f"a {_type_name(type(value))} object")


def _type_name(cls: type) -> str:
    """module.qualname of a class, read from `type` itself (a metaclass cannot run code here)."""
    module, name = type.__dict__["__module__"].__get__(cls), type.__dict__["__qualname__"].__get__(cls)
    return f"{module}.{name}" if type(module) is str and type(name) is str else "an object"


# what the tensors of one frame may take, leaving room for both headers within MAX_FRAME
_ENCODE_BYTES = MAX_FRAME - MAX_HEADER - MAX_ST_HEADER - 16


def _unsent(what: str) -> dict:
    """The node that stands for a value the host would refuse (decoded as grader.checks.results.Unsent)."""
    return {"unsent": _short(what)}


def _short(text: str, cap: int = MAX_STRING) -> str:
    return text if len(text) <= cap else text[:cap - 3] + "..."


def encode(item: str, outcomes: list[dict]) -> bytes:
    """The frame for `item`'s outcomes (dicts with value, error, mutated, shortcut). Values the host would
    refuse (other types, too long, too deep, too many) become Unsent nodes that describe them; when the
    texts together are too long for the header, they are cut shorter, and at last replaced by one error."""
    from safetensors.torch import save

    outcomes = outcomes[:MAX_OUTCOMES]
    for cap in (MAX_STRING, 160):
        enc = _Encoder(cap)
        rows = []
        for i, o in enumerate(outcomes):   # each later outcome keeps a node for its placeholder
            budget = MAX_NODES - enc.nodes - (len(outcomes) - i - 1)
            rows.append({"value": enc.outcome_value(o["value"], budget), "error": _text_or_none(o["error"], cap),
                         "mutated": [_short(str(m), MAX_NAME) for m in o["mutated"][:MAX_MUTATED]],
                         "shortcut": _text_or_none(o["shortcut"], cap),
                         "wiring": _text_or_none(o.get("wiring"), MAX_STRING)})
        header = json.dumps({"item": _short(item, MAX_NAME), "outcomes": rows}).encode()
        if len(header) <= MAX_HEADER:
            return _LENGTH.pack(len(header)) + header + (save(enc.tensors) if enc.tensors else b"")
    return encode(item, [{"value": None, "error": "the outcomes were too large for the grader to read",
                          "mutated": [], "shortcut": _text_or_none(o["shortcut"], 160), "wiring": None}
                         for o in outcomes])


def _text_or_none(text: Any, cap: int) -> str | None:
    return None if text is None else _short(str(text), cap)


# ----------------------------------------------------------------------------- host side
def _json(data: bytes, what: str) -> Any:
    """JSON with 64-bit ints only; nesting is bounded by the C parser's recursion check (RecursionError)."""
    def small_int(text: str) -> int:
        if len(text) > 20:
            raise ValueError(f"{what}: an int of {len(text)} digits (ints are 64-bit)")
        return int(text)
    try:
        return json.loads(data, parse_int=small_int)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    except ValueError as err:
        raise ValueError(f"{what} is not valid JSON ({str(err)[:80]})") from None


def decode(payload: bytes, item: str) -> list[dict]:
    """The outcomes of `item` (dicts with value, error, mutated, shortcut; values hold exact torch.Tensors,
    on the device the harness named) from a frame; ValueError (naming the limit) on anything else."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"a frame of {len(payload)} bytes, over the limit of {MAX_FRAME}")
    if len(payload) < _LENGTH.size:
        raise ValueError("a frame shorter than its header")
    (n,) = _LENGTH.unpack_from(payload)
    if n > MAX_HEADER:
        raise ValueError(f"an outcome header of {n} bytes, over the limit of {MAX_HEADER}")
    if _LENGTH.size + n > len(payload):
        raise ValueError("an outcome header longer than its frame")
    tree = _json(payload[_LENGTH.size:_LENGTH.size + n], "the outcome header")
    if type(tree) is not dict or set(tree) != {"item", "outcomes"} or type(tree["outcomes"]) is not list:
        raise ValueError("the outcome header is not {item, outcomes}")
    if tree["item"] != item:
        raise ValueError("outcomes for another item")
    if len(tree["outcomes"]) > MAX_OUTCOMES:
        raise ValueError(f"{len(tree['outcomes'])} outcomes, over the limit of {MAX_OUTCOMES}")
    tensors = _tensors(payload[_LENGTH.size + n:])
    reader = _Reader(tensors)
    outcomes = [reader.outcome(o) for o in tree["outcomes"]]
    if reader.used != len(tensors):
        raise ValueError(f"{len(tensors) - reader.used} tensors that no outcome refers to")
    return outcomes


def _tensors(blob: bytes) -> list[torch.Tensor]:
    """The safetensors part, checked (count, dtypes, shapes, sizes, offsets) before safetensors allocates."""
    if not blob:
        return []
    if len(blob) < 8:
        raise ValueError("a tensor table shorter than its header")
    n = int.from_bytes(blob[:8], "little")
    if n > MAX_ST_HEADER or 8 + n > len(blob):
        raise ValueError(f"a tensor table header of {n} bytes, over the limit of {MAX_ST_HEADER} or its frame")
    header = _json(blob[8:8 + n], "the tensor table header")
    if type(header) is not dict:
        raise ValueError("the tensor table header is not a table")
    if len(header) > MAX_TENSORS:
        raise ValueError(f"{len(header)} tensors, over the limit of {MAX_TENSORS}")
    if set(header) != {str(k) for k in range(len(header))}:
        raise ValueError("tensors named other than 0, 1, 2, ...")
    spans, total = [], 0
    for k in range(len(header)):
        entry = header[str(k)]
        if type(entry) is not dict or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {k}: not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise ValueError(f"tensor {k}: dtype {str(dtype)[:20]!r} is not one of {', '.join(DTYPES)}")
        if type(shape) is not list or len(shape) > MAX_DIMS or any(type(d) is not int or not 0 <= d <= MAX_DIM
                                                                    for d in shape):
            raise ValueError(f"tensor {k}: a shape that is not at most {MAX_DIMS} sizes of 0 to {MAX_DIM}")
        if type(offsets) is not list or len(offsets) != 2 or any(type(o) is not int for o in offsets):
            raise ValueError(f"tensor {k}: data_offsets that are not two ints")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        total += nbytes
        if total > MAX_TENSOR_BYTES:
            raise ValueError(f"tensors of more than {MAX_TENSOR_BYTES} bytes together, over the limit")
        if offsets[1] - offsets[0] != nbytes:
            raise ValueError(f"tensor {k}: {offsets[1] - offsets[0]} bytes for a shape that holds {nbytes}")
        spans.append((offsets[0], offsets[1]))
    end = 0
    for start, stop in sorted(spans):   # the buffers tile the data: no gap, no overlap, nothing after
        if start != end:
            raise ValueError(f"tensor offsets that {'overlap' if start < end else 'leave a gap'} at byte {start}")
        end = stop
    if end != len(blob) - 8 - n:
        raise ValueError(f"a tensor table whose offsets cover {end} of its {len(blob) - 8 - n} bytes")
    from safetensors.torch import load

    try:
        loaded = load(blob)
    except Exception as err:   # safetensors checks again (its own error types)
        raise ValueError(f"an unreadable tensor table ({type(err).__name__})") from None
    return [loaded[str(k)] for k in range(len(header))]


class _Reader:
    """Walks the outcome tree once (so, linear in it), counting nodes and using each tensor at most once."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors, self.taken, self.used, self.nodes = tensors, [False] * len(tensors), 0, 0

    def outcome(self, data: Any) -> dict:
        if type(data) is not dict or set(data) not in (_KEYS, _KEYS - {"wiring"}):
            raise ValueError("an outcome that is not {value, error, mutated, shortcut[, wiring]}")
        mutated = data["mutated"]
        if type(mutated) is not list or len(mutated) > MAX_MUTATED:
            raise ValueError(f"mutated is not a list of at most {MAX_MUTATED} names")
        return {"value": self.value(data["value"], 0), "error": _text(data["error"], "error"),
                "mutated": [_text(m, "a mutated name", optional=False, limit=MAX_NAME) for m in mutated],
                "shortcut": _text(data["shortcut"], "shortcut"),
                "wiring": _text(data.get("wiring"), "wiring")}

    def value(self, data: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} values, over the limit")
        if data is None or type(data) in (bool, int, float):
            return data
        if type(data) is str:
            return _text(data, "a string value")
        if type(data) is not dict or len(data) not in (1, 2):
            raise ValueError("a value that is not null, a number, a string, a tensor, a list or a tuple")
        if set(data) == {"tensor", "device"}:
            return self.tensor(data["tensor"], data["device"])
        if set(data) == {"meta", "dtype"}:
            return _meta(data["meta"], data["dtype"])
        if set(data) == {"unsent"}:
            return Unsent(_text(data["unsent"], "an unsent value", optional=False))
        ((kind, items),) = data.items() if len(data) == 1 else (("two keys", None),)
        if kind not in ("list", "tuple") or type(items) is not list:
            raise ValueError("a value that is not null, a number, a string, a tensor, a list or a tuple")
        if depth >= MAX_DEPTH - 1:
            raise ValueError(f"values nested more than {MAX_DEPTH - 1} deep, over the limit")
        if len(items) > MAX_LENGTH:
            raise ValueError(f"a {kind} of {len(items)} items, over the limit of {MAX_LENGTH}")
        values = [self.value(v, depth + 1) for v in items]
        return values if kind == "list" else tuple(values)

    def tensor(self, k: Any, device: Any) -> torch.Tensor:
        if type(k) is not int or not 0 <= k < len(self.tensors):
            raise ValueError("a reference to a tensor that is not in the frame")
        if self.taken[k]:
            raise ValueError(f"tensor {k} referred to twice (values are trees, never shared)")
        if type(device) is not str or not _DEVICE.fullmatch(device):
            raise ValueError("a tensor on a device that is neither cpu nor cuda")
        self.taken[k], self.used = True, self.used + 1
        t = self.tensors[k]
        if device != "cpu":
            if not torch.cuda.is_available():
                raise ValueError(f"a tensor on {device}, and this machine has no GPU")
            t = t.to(device)
        return t


def _meta(shape: Any, dtype: Any) -> torch.Tensor:
    """A meta tensor (no storage: nothing is allocated whatever the shape) of a checked shape and dtype."""
    if type(dtype) is not str or dtype not in DTYPES:
        raise ValueError(f"a meta tensor whose dtype is not one of {', '.join(DTYPES)}")
    if type(shape) is not list or len(shape) > MAX_DIMS or any(type(d) is not int or not 0 <= d <= MAX_DIM
                                                                for d in shape):
        raise ValueError(f"a meta tensor whose shape is not at most {MAX_DIMS} sizes of 0 to {MAX_DIM}")
    return torch.empty(shape, dtype=DTYPES[dtype], device="meta")


def _text(data: Any, what: str, optional: bool = True, limit: int = MAX_STRING) -> str | None:
    if data is None and optional:
        return None
    if type(data) is not str:
        raise ValueError(f"{what} that is not a string")
    if len(data) > limit:
        raise ValueError(f"{what} of {len(data)} characters, over the limit of {limit}")
    return data


_EVENT_TYPES = {"cell": (str,), "item": (str,), "error": (str, type(None)), "done": (bool,)}


def decode_event(payload: bytes) -> dict:
    """A step event ({"cell"|"item": str, "error": str | None, "done": bool}); ValueError on anything else."""
    if len(payload) > MAX_EVENT:
        raise ValueError(f"an event of {len(payload)} bytes, over the limit of {MAX_EVENT}")
    event = _json(payload, "an event")
    if type(event) is not dict or not set(event) <= set(_EVENT_TYPES) or \
            any(type(v) not in _EVENT_TYPES[k] for k, v in event.items()):
        raise ValueError("an event that is not {cell | item, error, done}")
    for key in ("cell", "item", "error"):
        _text(event.get(key), f"an event's {key}")
    return event
