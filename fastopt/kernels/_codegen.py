"""Loop generator: every backend's kernels, written from the one source, :mod:`.rules`.

A *rule* (see :mod:`fastopt.kernels.rules`) is the per-element arithmetic of a kernel family.
This module reads the rules (their signatures, and their source through :mod:`ast`) and writes,
for each backend, one loop per family, dtype and flag combination around a call of the rule:

``numba_source()``
    Python source for Numba: the rules and helpers verbatim under ``njit(inline="always")``,
    and per variant a ``prange`` loop (``*_par``, compiled ``parallel=True``) and its serial
    twin (``*_ser``).  Written to a file named by the source hash (so Numba's on-disk cache
    can never serve a loop compiled from an older rule) and imported by
    :mod:`fastopt.kernels.cpu`.
``cuda_source()``
    The same for numba.cuda: the rules as ``cuda.jit(device=True, forceinline=True)`` device
    functions and one grid-stride ``cuda.jit`` kernel per variant.
``cython_source()``
    A complete ``.pyx``: the helpers translated to ``cdef inline ... noexcept nogil`` functions
    per dtype, and per variant a ``nogil`` loop over ``__restrict__`` pointers whose body is the
    rule's own Python source (flags replaced by their constant values, ``sqrt`` mapped to
    ``sqrtf`` for float32, helper calls to their typed twins), serial below the threshold and
    ``prange(schedule='static')`` above it, plus a ``def`` entry point that walks a table of
    buffers: one Python call steps every buffer of a (group, dtype).
    setup.py writes it into ``build/`` at build time and cythonizes it.

Why this design (and not, e.g., Cython's pure-Python mode or a Tempita template): the rule is
ordinary Python that Numba and numba.cuda compile as it is, so for two of the three backends
nothing is translated at all; for Cython the translation is mechanical (``cdef`` declarations
for the locals, flags made constants, two name substitutions: the body is valid Cython as it
stands), and generating whole loops lets each flag combination be its own function, so no flag
is tested per element on any backend.  The Cython loop inlines the rule's body rather than
calling a ``cdef inline`` function returning a ctuple: gcc kept that struct in memory in the
serial loop and did not vectorize it (amsgrad: 4x slower below the threshold).
Cython's pure-Python mode would need a ``.pxd`` with the types of every rule written by hand
(a second copy of each signature) and cannot inline functions across modules; a Tempita
template would still need the rule body spelled in Cython.  Measured on the Cython backend
(AVX2 build): 0.15 us for a 6-buffer call through the table, against about 2.5 us when every
buffer went through its own ``prange(use_threads_if=...)`` region (libgomp starts a team of
one even when the condition is false).

Flags are compile-time: each combination is a variant named ``<rule>_<f32|f64>_<bits>`` (one
bit per flag, in the rule's flag order).  The per-step scalars are passed as doubles and cast
to the arrays' dtype once before the loop; the arrays of a variant's unused optional state are
never touched.

This module imports nothing but the standard library, so setup.py can load it by path in an
isolated build.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import itertools
import os
import textwrap

__all__ = ["Signature", "load_rules", "signatures", "helpers", "source_hash", "variant_name",
           "flag_variants", "numba_source", "cuda_source", "cython_source", "DTYPES"]

HERE = os.path.dirname(os.path.abspath(__file__))
RULES_FILE = os.path.join(HERE, "rules.py")

#: dtype tag -> (NumPy name, C type, sqrt in C)
DTYPES = {"f32": ("float32", "float", "sqrtf"), "f64": ("float64", "double", "sqrt")}


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def source_hash():
    """Hash of everything the generated loops depend on (the rules and this generator)."""
    h = hashlib.sha256()
    for path in (RULES_FILE, os.path.abspath(__file__)):
        h.update(_read(path).encode())
    return h.hexdigest()[:16]


def load_rules(path=RULES_FILE):
    """The rules module, loaded from its file (no package import needed)."""
    spec = importlib.util.spec_from_file_location("_fastopt_rules", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Signature:
    """What a loop needs to know about a rule: its arrays, scalars and flags."""

    def __init__(self, fn, check=True):
        meta = fn.fastopt_rule
        self.fn = fn
        self.name = fn.__name__
        params = inspect.signature(fn).parameters.values()
        kinds = inspect.Parameter
        self.arrays = tuple(p.name for p in params if p.kind == kinds.POSITIONAL_ONLY)
        self.scalars = tuple(p.name for p in params if p.kind == kinds.POSITIONAL_OR_KEYWORD)
        self.flags = tuple(p.name for p in params if p.kind == kinds.KEYWORD_ONLY)
        self.readonly = meta["readonly"]
        self.optional = meta["optional"]
        self.written = tuple(a for a in self.arrays if a not in self.readonly)
        for name in self.readonly:
            if name not in self.arrays:
                raise ValueError(f"rule {self.name}: readonly {name!r} is not one of its arrays")
        for name, flag in self.optional.items():
            if name not in self.arrays or flag not in self.flags:
                raise ValueError(f"rule {self.name}: optional {name!r} -> {flag!r} must name "
                                 f"an array and a flag")
        if check:
            _check_body(self)

    def used(self, flags):
        """Arrays the variant with these flag values reads or writes."""
        on = dict(zip(self.flags, flags))
        return tuple(a for a in self.arrays if a not in self.optional or on[self.optional[a]])

    def __repr__(self):
        return (f"Signature({self.name}: arrays={self.arrays}, scalars={self.scalars}, "
                f"flags={self.flags}, written={self.written})")


def signatures(mod, check=True):
    """``{name: Signature}`` of every rule in ``mod``, in file order (``check``: also check each
    rule's body against the conventions, which reads its source)."""
    return {name: Signature(obj, check) for name, obj in vars(mod).items()
            if callable(obj) and hasattr(obj, "fastopt_rule")}


def helpers(mod):
    """The helper functions of ``mod``, in file order."""
    return [obj for obj in vars(mod).values() if callable(obj) and hasattr(obj, "fastopt_helper")]


def flag_variants(sig):
    """Every combination of the rule's flags, as tuples of bools."""
    return list(itertools.product((False, True), repeat=len(sig.flags)))


def variant_name(sig, dtype, flags):
    tag = dtype if dtype in DTYPES else {"float32": "f32", "float64": "f64"}[str(dtype)]
    return f"{sig.name}_{tag}_{''.join('1' if f else '0' for f in flags)}"


# -- reading rule source ---------------------------------------------------------------------

def _fn_ast(fn):
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    node.decorator_list = []
    return node


def _body(node):
    """The statements of a function without its docstring."""
    body = list(node.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body


def _check_body(sig):
    node = _fn_ast(sig.fn)
    body = _body(node)
    for sub in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, (int, float, complex)) \
                and not isinstance(sub.value, bool):
            raise ValueError(f"rule {sig.name}: numeric literal {sub.value!r} (line "
                             f"{sub.lineno}); pass constants as scalars so float32 stays "
                             f"float32")
        if isinstance(sub, ast.Return) and sub is not body[-1]:
            raise ValueError(f"rule {sig.name}: the only return must be the last statement")
    last = body[-1] if body else None
    if not (isinstance(last, ast.Return) and isinstance(last.value, ast.Tuple)
            and len(last.value.elts) == len(sig.written)):
        raise ValueError(f"rule {sig.name}: must end with `return <{len(sig.written)} values>` "
                         f"(the new {', '.join(sig.written)})")


def _python_def(fn):
    """The function's source without decorators, every parameter plain positional (Numba's
    inliner mis-binds keyword arguments, and the CUDA simulator takes none)."""
    node = _fn_ast(fn)
    a = node.args
    a.args, a.posonlyargs, a.kwonlyargs, a.kw_defaults = a.posonlyargs + a.args + a.kwonlyargs, \
        [], [], []
    for arg in a.args:
        arg.annotation = None
    return ast.unparse(node)


# -- Numba -----------------------------------------------------------------------------------

_NUMBA_HEAD = '''\
"""Numba loops generated by fastopt.kernels._codegen from rules.py: do not edit.

Source hash {hash}.  Rules and helpers are compiled inline into one loop per variant;
``*_par`` loops run under ``parallel=True``, ``*_ser`` ones on the calling thread.
"""
import numpy as np
from numba import njit, prange

SOURCE_HASH = "{hash}"
# fastmath without nnan/ninf: NaN and Inf propagate, isfinite checks stay.
_FM = {{"nsz", "arcp", "contract", "afn", "reassoc"}}
sqrt = np.sqrt
_inline = njit(inline="always", fastmath=_FM, error_model="numpy", nogil=True)
_par = njit(parallel=True, fastmath=_FM, error_model="numpy", nogil=True, cache=True)
_ser = njit(fastmath=_FM, error_model="numpy", nogil=True, cache=True)
'''


def _call(sig, flags, load):
    """``rule(elements..., scalars..., flags...)`` for a Numba or CUDA loop body;
    ``load(array)`` gives the element expression of a used array (an unused optional array gets
    the first array's element as a placeholder the rule never reads).  Everything is passed
    positionally, flags as ``True``/``False`` constants."""
    used = sig.used(flags)
    first = load(sig.arrays[0])
    args = [load(a) if a in used else first for a in sig.arrays] + list(sig.scalars)
    args += [str(v) for v in flags]
    return f"{sig.name}({', '.join(args)})"


def _stores(sig, flags, store, result="r"):
    used = sig.used(flags)
    return [store(a, f"{result}[{k}]") for k, a in enumerate(sig.written) if a in used]


def _loop_args(sig):
    return [f"a_{a}" for a in sig.arrays] + [f"s_{s}" for s in sig.scalars]


def numba_source(mod=None):
    """The Numba module (text) for every rule, dtype and flag combination."""
    mod = mod or load_rules()
    out = [_NUMBA_HEAD.format(hash=source_hash())]
    for fn in helpers(mod):
        out.append("\n@_inline\n" + _python_def(fn) + "\n")
    sigs = signatures(mod)
    for sig in sigs.values():
        out.append("\n@_inline\n" + _python_def(sig.fn) + "\n")
    for sig in sigs.values():
        for tag, (np_name, _, _) in DTYPES.items():
            for flags in flag_variants(sig):
                name = variant_name(sig, tag, flags)
                for kind, rng in (("par", "prange"), ("ser", "range")):
                    lines = [f"\n@_{kind}", f"def {name}_{kind}({', '.join(_loop_args(sig))}):"]
                    lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
                    lines.append(f"    for i in {rng}(a_{sig.arrays[0]}.size):")
                    lines.append(f"        r = {_call(sig, flags, lambda a: f'a_{a}[i]')}")
                    lines += ["        " + s for s in _stores(sig, flags,
                                                              lambda a, v: f"a_{a}[i] = {v}")]
                    out.append("\n".join(lines) + "\n")
    return "".join(out)


# -- numba.cuda --------------------------------------------------------------------------------

_CUDA_HEAD = '''\
"""numba.cuda kernels generated by fastopt.kernels._codegen from rules.py: do not edit.

Source hash {hash}.  Rules and helpers are device functions (force-inlined on a GPU); one
grid-stride kernel per variant.  Under NUMBA_ENABLE_CUDASIM=1 the same code runs in numba's
simulator (NumPy scalars: float32 arithmetic stays float32, NaN instead of exceptions).
"""
import math

import numpy as np
from numba import config as _numba_config
from numba import cuda

SOURCE_HASH = "{hash}"
SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)
sqrt = np.sqrt if SIMULATOR else math.sqrt
_device = cuda.jit(device=True) if SIMULATOR else cuda.jit(device=True, forceinline=True)
'''


def cuda_source(mod=None):
    """The numba.cuda module (text) for every rule, dtype and flag combination."""
    mod = mod or load_rules()
    out = [_CUDA_HEAD.format(hash=source_hash())]
    for fn in helpers(mod):
        out.append("\n@_device\n" + _python_def(fn) + "\n")
    sigs = signatures(mod)
    for sig in sigs.values():
        out.append("\n@_device\n" + _python_def(sig.fn) + "\n")
    for sig in sigs.values():
        for tag, (np_name, _, _) in DTYPES.items():
            for flags in flag_variants(sig):
                name = variant_name(sig, tag, flags)
                lines = ["\n@cuda.jit", f"def {name}({', '.join(_loop_args(sig))}):"]
                lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
                lines += ["    start = cuda.grid(1)", "    stride = cuda.gridsize(1)",
                          f"    for i in range(start, a_{sig.arrays[0]}.shape[0], stride):",
                          f"        r = {_call(sig, flags, lambda a: f'a_{a}[i]')}"]
                lines += ["        " + s for s in _stores(sig, flags,
                                                          lambda a, v: f"a_{a}[i] = {v}")]
                out.append("\n".join(lines) + "\n")
    return "".join(out)


# -- Cython ------------------------------------------------------------------------------------

_CYTHON_HEAD = '''\
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, infer_types=False
"""Cython kernels generated by fastopt.kernels._codegen from rules.py: do not edit.

Source hash {hash}.  Every rule and helper is a ``cdef inline ... noexcept nogil`` function per
dtype; every (rule, dtype, flags) variant is a ``nogil`` loop over ``__restrict__`` pointers
(serial below ``threshold`` elements, ``prange(schedule='static')`` above) and a ``def`` entry
point that steps each row of a table of buffers: ``table`` is the address of ``count`` rows of
``1 + len(arrays)`` machine words, ``(n, address of each array)``, 0 for an unused array;
``scalars`` is the tuple of the step's scalars; the thread threshold is read from
``fastopt.config.PARALLEL_THRESHOLD`` at every call.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf
from libc.stdint cimport uintptr_t

from fastopt import config as _config

cdef extern from "_omp_shim.h":
    int FASTOPT_OPENMP
    int fastopt_omp_max_threads() noexcept nogil

cdef extern from *:
    ctypedef float* f32_p "float * __restrict__"
    ctypedef const float* f32_cp "const float * __restrict__"
    ctypedef double* f64_p "double * __restrict__"
    ctypedef const double* f64_cp "const double * __restrict__"

#: Hash of the rules and generator this extension was built from (fastopt.kernels.cython
#: refuses a build whose hash differs from the installed sources).
SOURCE_HASH = "{hash}"
#: True when this extension was compiled with OpenMP (multi-threaded prange loops).
OPENMP = bool(FASTOPT_OPENMP)


def max_threads():
    """Threads a parallel loop uses (OpenMP's ``omp_get_max_threads()``; 1 without OpenMP)."""
    return fastopt_omp_max_threads()


cdef inline bint _finite_f32(float x) noexcept nogil:
    # x - x is 0 for finite x and NaN for +-Inf or NaN (exact without -ffast-math)
    return x - x == 0


cdef inline bint _finite_f64(double x) noexcept nogil:
    return x - x == 0


def all_finite_f32(uintptr_t address, Py_ssize_t n, Py_ssize_t threshold):
    """True when every element of the float32 buffer is finite."""
    cdef const float* x = <const float*>address
    cdef Py_ssize_t i, bad = 0
    if n < threshold:
        for i in range(n):
            if not _finite_f32(x[i]):
                return False
        return True
    for i in prange(n, nogil=True, schedule='static'):
        if not _finite_f32(x[i]):
            bad += 1
    return bad == 0


def all_finite_f64(uintptr_t address, Py_ssize_t n, Py_ssize_t threshold):
    """True when every element of the float64 buffer is finite."""
    cdef const double* x = <const double*>address
    cdef Py_ssize_t i, bad = 0
    if n < threshold:
        for i in range(n):
            if not _finite_f64(x[i]):
                return False
        return True
    for i in prange(n, nogil=True, schedule='static'):
        if not _finite_f64(x[i]):
            bad += 1
    return bad == 0
'''


class _CythonNames(ast.NodeTransformer):
    """Calls of helpers -> their typed twin; ``sqrt`` -> the C function of the dtype."""

    def __init__(self, tag, helper_names):
        self.tag, self.helper_names = tag, helper_names

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name):
            if node.func.id == "sqrt":
                node.func = ast.Name(DTYPES[self.tag][2], ast.Load())
            elif node.func.id in self.helper_names:
                node.func = ast.Name(f"{node.func.id}_{self.tag}", ast.Load())
            else:
                raise ValueError(f"unknown function {node.func.id!r} in a rule")
        return node


def _assigned(body, params):
    names = []
    for sub in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(sub, (ast.Assign, ast.AugAssign)):
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id not in params and n.id not in names:
                        names.append(n.id)
    return names


class _Constants(ast.NodeTransformer):
    """Flag names -> their values: each variant's C has constant conditions gcc folds away."""

    def __init__(self, values):
        self.values = values

    def visit_Name(self, node):
        if node.id in self.values:
            return ast.copy_location(ast.Constant(self.values[node.id]), node)
        return node


def _cython_helper(fn, tag, helper_names):
    """``cdef inline`` twin of a helper (one scalar result; ``x: bool`` parameters bint)."""
    ctype = DTYPES[tag][1]
    node = _fn_ast(fn)
    body = [_CythonNames(tag, helper_names).visit(s) for s in _body(node)]
    params = []
    for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
        flag = a.annotation is not None and ast.unparse(a.annotation) == "bool"
        params.append(("bint " if flag else f"{ctype} ") + a.arg)
    locals_ = _assigned(body, {p.split()[-1] for p in params})
    lines = [f"cdef inline {ctype} {fn.__name__}_{tag}({', '.join(params)}) noexcept nogil:"]
    if locals_:
        lines.append(f"    cdef {ctype} {', '.join(locals_)}")
    for stmt in body:
        lines.append(textwrap.indent(ast.unparse(stmt), "    "))
    return "\n".join(lines) + "\n"


_LOOP_NAMES = {"i", "n", "threshold", "r"}


def _cython_rule_body(sig, tag, flags, helper_names):
    """The rule's own body for one variant, to be inlined into the loop: (declared locals,
    statements computing the new values from the element locals, stores).

    The rule is not called as a function returning a ctuple: gcc keeps such a struct in memory
    in the serial loop and then does not vectorize it (seen with amsgrad's five arrays)."""
    node = _fn_ast(sig.fn)
    body = [_Constants(dict(zip(sig.flags, flags))).visit(
        _CythonNames(tag, helper_names).visit(st)) for st in _body(node)]
    ret, body = body[-1], body[:-1]
    used = sig.used(flags)
    locals_ = list(sig.arrays) + [v for v in _assigned(body, set(sig.arrays) | set(sig.scalars))]
    clash = _LOOP_NAMES & set(locals_) or {v for v in locals_ if v.startswith(("a_", "s_"))}
    if clash:
        raise ValueError(f"rule {sig.name}: local names {sorted(clash)} are reserved for loops")
    first = sig.arrays[0]
    loads = [f"{a} = a_{a}[i]" if a in used else f"{a} = a_{first}[i]  # unused: placeholder"
             for a in sig.arrays]
    stmts = [ast.unparse(st) for st in body]
    stores = [f"a_{a}[i] = {ast.unparse(v)}"
              for a, v in zip(sig.written, ret.value.elts) if a in used]
    return locals_, loads + stmts + stores


def cython_source(mod=None):
    """The complete ``.pyx`` (text) for every rule, dtype and flag combination."""
    mod = mod or load_rules()
    hs = helpers(mod)
    names = {fn.__name__ for fn in hs}
    sigs = signatures(mod)
    out = [_CYTHON_HEAD.format(hash=source_hash())]
    for tag in DTYPES:
        for fn in hs:
            out.append("\n\n" + _cython_helper(fn, tag, names))
    for sig in sigs.values():
        for tag, (_, ctype, _) in DTYPES.items():
            for flags in flag_variants(sig):
                out.append("\n\n" + _cython_variant(sig, tag, ctype, flags, names))
    return "".join(out)


def _cython_variant(sig, tag, ctype, flags, helper_names):
    name = variant_name(sig, tag, flags)
    used = sig.used(flags)
    ptrs = [f"{tag}_{'cp' if a in sig.readonly else 'p'} a_{a}" for a in sig.arrays if a in used]
    scal = [f"{ctype} {s}" for s in sig.scalars]
    locals_, body = _cython_rule_body(sig, tag, flags, helper_names)
    lines = [f"cdef void _{name}(Py_ssize_t n, {', '.join(ptrs + scal)}, Py_ssize_t threshold) "
             f"noexcept nogil:", "    cdef Py_ssize_t i", f"    cdef {ctype} {', '.join(locals_)}"]
    lines += ["    if n < threshold:", "        for i in range(n):"]
    lines += [textwrap.indent(b, " " * 12) for b in body]
    lines += ["    else:", "        for i in prange(n, schedule='static'):"]
    lines += [textwrap.indent(b, " " * 12) for b in body]
    # the entry point
    width = 1 + len(sig.arrays)
    nsc = len(sig.scalars)
    lines += ["", "", f"def {name}(uintptr_t table, Py_ssize_t count, tuple scalars):",
              f'    """{sig.name} ({tag}, flags {dict(zip(sig.flags, flags))}) over `count` '
              f'table rows; `scalars`: the {nsc} step scalars ({", ".join(sig.scalars)})."""',
              "    cdef const uintptr_t* t = <const uintptr_t*>table",
              "    cdef Py_ssize_t k",
              "    cdef Py_ssize_t threshold = _config.PARALLEL_THRESHOLD",
              f"    if len(scalars) != {nsc}:",
              f"        raise ValueError(f'{name} takes {nsc} scalars, got {{len(scalars)}}')"]
    lines += [f"    cdef {ctype} {s} = <{ctype}><double>scalars[{j}]"
              for j, s in enumerate(sig.scalars)]
    cargs = ["<Py_ssize_t>t[k * %d]" % width]
    for j, a in enumerate(sig.arrays):
        if a in used:
            const = "const " if a in sig.readonly else ""
            cargs.append(f"<{const}{ctype}*>t[k * {width} + {j + 1}]")
    cargs += list(sig.scalars) + ["threshold"]
    lines += ["    with nogil:", "        for k in range(count):",
              f"            _{name}({', '.join(cargs)})"]
    return "\n".join(lines) + "\n"
