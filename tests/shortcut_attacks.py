"""Submissions that take a shortcut the source reader cannot see: the attacks of tests/test_shortcut_attacks.py.

Each attack is the code of a few notebook cells for one graded item, written as a determined student would
write it after reading the grader: every name the source reader flags (gc, inspect, importlib, exec,
getattr with a computed name, __globals__, sys.modules, ...) is reached some other way, mostly with
``pkgutil.resolve_name`` and ``torch.sys.modules``. Each one computes the right answer (the test shows it on
the unwatched item), so only the watch inside the sandbox (grader.checks.shortcuts) stands between it and
full marks. Grouped by the ways of issue 15 (item 5); every way has the issue's spelling and at least one
relative that is not it.
"""

from __future__ import annotations

from dataclasses import dataclass

# A cell run before the solution cells: helpers every attack below may use, without a flagged name.
PRELUDE = '''import pkgutil
import torch
_modules = torch.sys.modules'''


@dataclass(frozen=True)
class Attack:
    """`cells`: code put after the imports cell; `item`: the item it takes a shortcut for (its solution cell is
    `solution`); `assignment`: 03_attention or 06_add_norm."""

    assignment: str
    item: str
    solution: str
    cells: tuple[str, ...] = ()
    unwatched: float = 1.0   # what it scores when nothing watches it (the first case of exception_text fails)
    caught: str = ""         # what the message of each of its cases says (the layer that caught it)


def sdpa(caught: str, body: str, *cells: str, unwatched: float = 1.0) -> Attack:
    return Attack("03_attention", "scaled_dot_product_attention",
                  "def scaled_dot_product_attention(q, k, v, mask=None):\n" + body, (PRELUDE, *cells), unwatched, caught)


def layer_norm(caught: str, body: str, *cells: str) -> Attack:
    return Attack("06_add_norm", "layer_norm", "def layer_norm(x, gamma, beta, eps=1e-5):\n" + body,
                  (PRELUDE, *cells), caught=caught)


# Zero weights and output for a query row with nothing to attend to, as the exercise asks (the kernels give NaN).
_FIX_ROWS = '''    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0).nan_to_num(0.0)
        out = weights @ v
    return out, weights'''
_WEIGHTS = '''    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
'''

ATTACKS: dict[str, Attack] = {
    # ---- 1. PyTorch's ATen operators, however they are called
    "aten_sdpa_math": sdpa("aten::_scaled_dot_product_attention_math", '''    bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    out, weights = torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask=bias)
''' + _FIX_ROWS),
    # relative: the public operator, called from C (map) with both PyTorch modes switched off around it
    "aten_sdpa_modes_off": sdpa("aten::scaled_dot_product_attention", _WEIGHTS + '''    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        out, = map(torch.ops.aten.scaled_dot_product_attention, [q], [k], [v], [mask])
    return out.nan_to_num(0.0) * (weights.sum(-1, keepdim=True) > 0), weights'''),
    "aten_native_layer_norm": layer_norm("aten::native_layer_norm", '''    return torch.ops.aten.native_layer_norm(x, [x.size(-1)], gamma, beta, eps)[0]'''),
    # relative: batch norm on the transposed rows is layer norm; called from C (map), modes switched off
    "aten_batch_norm_transposed": layer_norm("aten::native_batch_norm", '''    rows = x.reshape(-1, x.size(-1)).t()     # (d_model, N): each position is a channel
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        (normed, _, _), = map(torch.native_batch_norm, [rows], [None], [None], [None], [None], [True], [0.0],
                              [eps])
    return normed.t().reshape(x.shape) * gamma + beta'''),

    # ---- 2. reference functions bound into other course modules, reached with pkgutil.resolve_name
    "resolve_bound_reference": sdpa("transformer_ref.attention.scaled_dot_product_attention", '''    return _ref(q, k, v, mask)''',
                                    '''_ref = pkgutil.resolve_name("transformer_ref.multihead:scaled_dot_product_attention")'''),
    # relative: a course function that no item lists by name (the tiled kernel of chapter 12) gives the output
    "resolve_unlisted_reference": sdpa("transformer_ref.tiled_attention.tiled_attention", _WEIGHTS + '''    return _tiled(q, k, v, mask), weights''',
                                       '''_tiled = pkgutil.resolve_name("transformer_ref.tiled_attention:tiled_attention")'''),

    # ---- 3. the course's own helpers, through a check function's __module__ and torch.sys.modules
    "checks_module_helper": sdpa("uses grader", '''    return _modules[check_scaled_dot_product_attention.__module__].attend(q, k, v, mask)'''),
    # relative: the same helper called through a torch decorator, so that its caller is torch's code
    "checks_helper_behind_torch": sdpa("uses grader", '''    helper = _modules[check_self_attention.__module__].attend
    return torch.no_grad()(helper)(q, k, v, mask)'''),

    # ---- 4. the original behind a trip-wire, through an aliased getattr
    "wire_closure_aliased_getattr": sdpa("NameError", '''    return _original(q, k, v, mask)''', '''_g = getattr
_wire = pkgutil.resolve_name("transformer_ref.attention:scaled_dot_product_attention")
_original = _g(_wire, "__clo" + "sure__")[0].cell_contents'''),
    # relative: the wires' table of originals, in the grader's module
    "wire_table_of_originals": sdpa("transformer_ref.attention.scaled_dot_product_attention", '''    return _original(q, k, v, mask)''', '''_g = getattr
_wire = pkgutil.resolve_name("transformer_ref.attention:scaled_dot_product_attention")
_table = [v for v in vars(_modules[_g(type(_wire), "__mod" + "ule__")]).values()
          if type(v).__name__ == "WeakKeyDictionary"][0]
_original = _table[_wire]'''),

    # ---- 5. a fresh copy of a reference module
    "runpy_fresh_copy": sdpa("transformer_ref.attention.scaled_dot_product_attention", '''    return _copy["scaled_dot_product_attention"](q, k, v, mask)''', '''import runpy
_copy = runpy.run_path(pkgutil.resolve_name("transformer_ref").__path__[0] + "/attention.py")'''),
    # relative: the module's code compiled under another file name, and its function code taken out of it
    "code_copy_other_filename": sdpa("transformer_ref.attention.scaled_dot_product_attention", '''    return _copy(q, k, v, mask)''', '''import types
_path = pkgutil.resolve_name("transformer_ref").__path__[0] + "/attention.py"
_build = pkgutil.resolve_name("builtins:com" + "pile")
_module = _build(open(_path).read(), "<cell 9>", "ex" + "ec")
_code = [c for c in _module.co_consts if getattr(c, "co_name", "") == "scaled_dot_product_attention"][0]
_namespace = dict(vars(pkgutil.resolve_name("transformer_ref.attention")))
_copy = types.FunctionType(_code.replace(co_firstlineno=1), _namespace, None, (None, 0.0, True))'''),
    # relative: a copy whose bytecode differs (one more statement): only where its text came from gives it away
    "edited_copy": sdpa("the course's source files", '''    return _namespace["scaled_dot_product_attention"](q, k, v, mask)''', '''_path = pkgutil.resolve_name("transformer_ref").__path__[0] + "/attention.py"
_text = open(_path).read().replace("    _check_qkv(q, k, v, mask)", "    _unused = 0").replace(
    "dim=-1", "dim=len((0,)) - 2")   # no function the item calls has the reference's bytecode
_namespace = {"__name__": "mine"}
pkgutil.resolve_name("builtins:ex" + "ec")(_text, _namespace)'''),
    # relative: the reference module executed again in place
    "reload_reference": sdpa("was changed", '''    return _module.scaled_dot_product_attention(q, k, v, mask)''', '''_module = pkgutil.resolve_name("transformer_ref.attention")
pkgutil.resolve_name("importlib:reload")(_module)'''),

    # ---- 6. code of the student's that runs after the watch: a tensor subclass, an exception's text
    "subclass_detach": sdpa("transformer_ref.attention.scaled_dot_product_attention", '''    out = q.new_zeros(*q.shape[:-1], v.size(-1)).as_subclass(_Late)
    weights = q.new_zeros(*q.shape[:-1], k.size(-2)).as_subclass(_Late)
    out.inputs = weights.inputs = (q, k, v, mask)
    out.which, weights.which = 0, 1
    return out, weights''', '''_ref = pkgutil.resolve_name("transformer_ref.attention:scaled_dot_product_attention")

class _Late(torch.Tensor):
    def detach(self):
        return _ref(*self.inputs)[self.which].detach()'''),
    # relative: the grader makes the failing case's message from the exception, after its call has returned
    "exception_text": sdpa("transformer_ref.attention.scaled_dot_product_attention", '''    key = _key(q, k, v, mask)
    if key in _answers:
        return _answers[key]
    raise _Answer()''', '''_ref = pkgutil.resolve_name("transformer_ref.attention:scaled_dot_product_attention")
_answers = {}

def _key(*tensors):
    return tuple(None if t is None else (tuple(t.shape), t.double().sum().item()) for t in tensors)

class _Answer(Exception):
    def __str__(self):   # the grader's cases are in memory: answer them all
        for case in [o for o in _modules["g" + "c"].get_objects() if type(o).__name__ == "Case"]:
            if len(case.args) >= 3 and not case.init:
                args = (*case.args, *case.kwargs.values(), None)[:4]
                _answers[_key(*args)] = _ref(*args)
        return "no answer yet"''', unwatched=2 / 3),

    # ---- 7. the watch switched off
    "wires_off": sdpa("the watch was changed", '''    pkgutil.resolve_name("grader.checks.watch:_CURRENT").clear()
    return _ref(q, k, v, mask)''', '''_ref = pkgutil.resolve_name("transformer_ref.attention:scaled_dot_product_attention")'''),
    # relative: the profile hook taken off and put back around the call of an original
    "profile_off_and_on": sdpa("sys.setprofile was called", '''    hook = _get()
    _set(None)
    try:
        return _original(q, k, v, mask)
    finally:
        _set(hook)''', '''_get, _set = pkgutil.resolve_name("sys:getprofile"), pkgutil.resolve_name("sys:setprofile")
_original = pkgutil.resolve_name("grader.checks.watch:_ORIGINALS")[
    pkgutil.resolve_name("transformer_ref.attention:scaled_dot_product_attention")]'''),
    # relative: a fresh copy called in a thread of the student's, where no profile hook or mode is installed
    "copy_in_thread": sdpa("a thread was started", '''    done = _queue.Queue()
    _thread.start_new_thread(lambda: done.put(_copy(q, k, v, mask)), ())
    return done.get(timeout=5)''', '''import _thread, queue as _queue, runpy
_copy = runpy.run_path(pkgutil.resolve_name("transformer_ref").__path__[0] + "/attention.py")[
    "scaled_dot_product_attention"]'''),
}

# Not shortcuts: the grader's own calls, and a reference typed in by hand (the book shows its source).
HONEST: dict[str, Attack] = {
    "solution": Attack("03_attention", "scaled_dot_product_attention", ""),
    "solution_07": Attack("07_transformer", "greedy_decode", ""),   # it calls the model the case hands it
    "solution_08": Attack("08_bert", "mask_tokens", ""),
    "solution_11": Attack("11_attention_at_scale", "cached_attention_step", ""),
    # a cell runs the check again: the check calls the reference, which is the grader's call, not the student's
    "check_in_a_cell": Attack("03_attention", "scaled_dot_product_attention", "", (
        "check_scaled_dot_product_attention(scaled_dot_product_attention, seeds=(5,))",)),
    # the reference's masked softmax, typed in: the same bytecode as the course's, but the student's own code
    "typed_in_reference": sdpa("", '''    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T_q, T_k)
    return _masked_softmax(scores, mask) @ v, _masked_softmax(scores, mask)''', '''from __future__ import annotations

import math

import torch


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax over the last axis, restricted to mask == True; fully masked rows -> all zeros.

    scores: (..., T_q, T_k); mask: bool, broadcastable to scores.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    # The smallest finite number rather than -inf: a row with every key masked would be
    # softmax([-inf, ..., -inf]) = 0/0 = NaN, in the forward pass and in the gradient.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    # Fully masked rows came out uniform; every other masked entry is already exactly 0.
    return weights.masked_fill(~mask, 0.0)'''),
}

# Not shortcuts either: wrong answers written the way students write them, which the watch must leave to the checks
# (greedy_decode calls the model the case hands it, whose class is the grader's; torch.manual_seed keeps a
# traceback of the stack, which reads the grader's files).
MISTAKEN: dict[str, Attack] = {
    "greedy_first_position": Attack("07_transformer", "greedy_decode", '''def greedy_decode(model, src, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src)
        out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        while out.size(1) < max_len and not done.all():
            logits = model.decode(out, memory, src)
            nxt = logits[:, 0].argmax(dim=-1)          # the first position: the mistake
            nxt[done] = model.pad_id
            out = torch.cat([out, nxt.unsqueeze(1)], dim=1)
            done = done | (nxt == eos_id)
        return out'''),
    "mask_tokens_reseeded": Attack("08_bert", "mask_tokens", '''def mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    torch.manual_seed(0)   # "so that it is reproducible": the mistake
    labels = input_ids.clone()
    special = torch.isin(input_ids, torch.as_tensor(special_token_ids, device=input_ids.device))
    chosen = (torch.rand(input_ids.shape, device=input_ids.device) < mlm_probability) & ~special
    labels[~chosen] = -100
    masked = input_ids.clone()
    replace = chosen & (torch.rand(input_ids.shape, device=input_ids.device) < 0.8)
    masked[replace] = mask_token_id
    rand = chosen & ~replace & (torch.rand(input_ids.shape, device=input_ids.device) < 0.5)
    masked[rand] = torch.randint(vocab_size, input_ids.shape, device=input_ids.device)[rand]
    return masked, labels'''),
}
