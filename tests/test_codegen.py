"""The single-source kernel layer: rule conventions, the oracle and the specs in step with the
rules, the generated Numba code (float32 stays float32, packed SIMD), and generated code that
cannot go stale."""
import inspect
import re
import shutil
import subprocess

import numpy as np
import pytest

from fastopt import config, specs
from fastopt.kernels import _codegen, reference, rules

RULES = _codegen.signatures(rules)


# -- conventions --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, match", [
    ("    param = param * 1.0\n    return (param,)", "numeric literal 1.0"),
    ("    if flag:\n        return (param,)\n    return (param,)", "only return"),
    ("    param = param * s\n", "must end with `return <1 values>`"),
    ("    return param, param", "must end with `return <1 values>`"),
])
def test_rule_conventions_are_enforced(body, match, tmp_path):
    path = tmp_path / "bad_rules.py"
    path.write_text("from fastopt.kernels.rules import rule\n\n"
                    "@rule()\ndef bad(param, /, s, *, flag):\n" + body + "\n")
    with pytest.raises(ValueError, match=match):
        _codegen.signatures(_codegen.load_rules(str(path)))


def test_every_rule_has_an_oracle_with_its_parameters():
    for name, sig in RULES.items():
        ref = getattr(reference, name)
        params = inspect.signature(ref).parameters
        # (a grid rule's oracle also takes the matrices' shape: n rows of m, keyword-only)
        shape = ("n", "m") if sig.grid else ()
        assert tuple(params) == sig.arrays + sig.scalars + sig.flags + shape, name
        assert all(params[f].kind == inspect.Parameter.KEYWORD_ONLY for f in shape), name
        assert all(params[f].kind == inspect.Parameter.KEYWORD_ONLY for f in sig.flags), name


@pytest.mark.parametrize("spec", specs.SPECS, ids=lambda s: s.name)
def test_specs_match_their_rules(spec):
    sig = spec.signature
    assert sig.arrays[:2] == ("param", "grad")
    assert set(spec.state) == set(sig.arrays[2:]) == set(spec.state_names)
    for kw in spec.cases.values():
        group = spec.defaults() | kw
        spec.validate(group)
        assert len(spec.scalars(group, 3, 0.1)) == len(sig.scalars)
        flags = spec.flags(group)
        assert len(flags) == len(sig.flags) and all(isinstance(f, bool) for f in flags)
    assert spec.bench and spec.cases and spec.example.strip().startswith(">>>")


def test_bytes_per_element_come_from_the_rule():
    """SPEC.md's table, derived from which arrays each variant reads and writes."""
    want = {("SGD", ()): 12, ("SGD", (("momentum", 0.9),)): 20, ("Momentum", ()): 20,
            ("RMSprop", ()): 20, ("RMSprop", (("centered", True),)): 28, ("Adagrad", ()): 20,
            ("Adam", ()): 28, ("Adam", (("amsgrad", True),)): 36, ("AdamW", ()): 28}
    for (name, extra), b in want.items():
        s = specs.spec(name)
        assert s.bytes_per_element(s.defaults() | dict(extra)) == b, (name, extra)


# -- generated code -----------------------------------------------------------------------------

def test_the_source_hash_follows_the_rules(tmp_path, monkeypatch):
    """An edited rule gives another hash, hence another generated module file and a fresh
    compile (Numba's cache can never serve a loop built from the old rule)."""
    before = _codegen.source_hash()
    edited = tmp_path / "rules.py"
    text = open(_codegen.RULES_FILE).read()
    edited.write_text(text.replace("average = decay * average + one_minus_decay * param",
                                   "average = one_minus_decay * param + decay * average"))
    monkeypatch.setattr(_codegen, "RULES_FILE", str(edited))
    assert _codegen.source_hash() != before
    src = _codegen.numba_source(_codegen.load_rules(str(edited)))
    assert "average = one_minus_decay * param + decay * average" in src
    assert _codegen.source_hash() in src


def test_generated_sources_compile():
    compile(_codegen.numba_source(), "numba", "exec")
    compile(_codegen.cuda_source(), "cuda", "exec")
    pyx = _codegen.cython_source()
    assert f'SOURCE_HASH = "{_codegen.source_hash()}"' in pyx
    for sig in RULES.values():
        for flags in _codegen.flag_variants(sig):
            assert f"def {_codegen.variant_name(sig, 'f32', flags)}(" in pyx


def _fresh(dispatcher):
    """The same loop, compiled without the disk cache (Numba cannot inspect cached code)."""
    from numba import njit
    return njit(parallel=True, fastmath=set(config.FASTMATH_FLAGS), error_model="numpy",
                nogil=True)(dispatcher.py_func)


@pytest.mark.parametrize("rule, flags", [("adam", (True, True, True)), ("rmsprop",
                                                                        (True, True, True, False)),
                                         ("adagrad", (True,)), ("sgd", (True, True, True))])
def test_float32_loops_stay_float32_and_vectorize(rule, flags):
    """How the generated code was checked: the LLVM IR of the float32 parallel loop has no
    ``fpext`` (nothing is widened to double), and its assembly has packed (ymm/zmm) square
    roots and divisions where the rule has them."""
    from fastopt.kernels import cpu, rule_signature
    sig = rule_signature(rule)
    name = _codegen.variant_name(sig, "f32", flags)
    fn = _fresh(getattr(cpu.module(), name + "_par"))
    n = 64
    arrays = [np.ones(n, np.float32) for _ in sig.arrays]
    fn(*arrays, *[0.5] * len(sig.scalars))
    s = fn.signatures[0]
    ir, asm = fn.inspect_llvm(s), fn.inspect_asm(s)
    assert "fpext" not in ir
    src = inspect.getsource(getattr(rules, rule))
    if "sqrt(" in src:
        assert re.search(r"vsqrtps\s+%[yz]mm", asm), "no packed sqrt"
    if "/" in src.split('"""')[-1]:
        assert re.search(r"vdivps\s+%[yz]mm", asm), "no packed division"
    assert re.search(r"v(?:mul|add|fmadd\d*)ps\s+%[yz]mm", asm), "no packed arithmetic"


def test_numba_reduction_vectorizes():
    """LAMB's first pass (a reduction): the element loop has packed square roots and divisions
    (each term goes to a block buffer, not into a running float64 sum, which kept the whole loop
    scalar and ran it at a third of the bandwidth). The 64 float64 lanes the buffer is added into
    are unrolled by LLVM into scalar additions, 64 independent chains: a few milliseconds of the
    pass at 2**24 elements, measured, not asserted here."""
    from fastopt.kernels import cpu, rule_signature
    sig = rule_signature("lamb")
    fn = _fresh(getattr(cpu.module(), _codegen.variant_name(sig, "f32", (True,)) + "_par"))
    n = 2 * _codegen.SUM_BLOCK + 5
    fn(*[np.ones(n, np.float32) for _ in sig.arrays], *[0.5] * len(sig.scalars))
    asm = fn.inspect_asm(fn.signatures[0])
    assert re.search(r"vsqrtps\s+%[yz]mm", asm), "no packed sqrt"
    assert re.search(r"vdivps\s+%[yz]mm", asm), "no packed division"



@pytest.mark.parametrize("formats", [("bf16", "bf16", "bf16", "bf16", "f32"),
                                     ("bf16", "bf16", "f32", "f32", "f32")])
def test_numba_threaded_layout_loop_vectorizes(formats):
    """The threaded Numba loop of a 16-bit layout (AdamW on bfloat16 parameters, bfloat16 or
    float32 state): packed square roots and divisions.  Indexing the whole arrays inside the
    ``prange`` kept it scalar, 10x slower per element than its serial twin; it now steps
    chunks through views (``_numba_layout_loop``)."""
    import types
    from fastopt.kernels import rule_signature
    sig = rule_signature("adam")
    src = _codegen.layout_source("numba", sig, "f32", (False, False, True), formats,
                                 "nearest", "lay").replace("cache=True", "cache=False")
    mod = types.ModuleType("fastopt_test_layout")
    exec(compile(src, "fastopt_test_layout", "exec"), mod.__dict__)
    n = _codegen.LAYOUT_CHUNK + 7
    arrays = [np.full(n, 0x3F80 if f == "bf16" else 1.0,
                      np.uint16 if f == "bf16" else np.float32) for f in formats]
    mod.lay_par(*arrays, *[0.5] * len(sig.scalars), 0, 1, 0)
    asm = mod.lay_par.inspect_asm(mod.lay_par.signatures[0])
    assert re.search(r"vsqrtps\s+%[yz]mm", asm), "no packed sqrt"
    assert re.search(r"vdivps\s+%[yz]mm", asm), "no packed division"

def _functions(asm):
    """{function name: its disassembly} from ``objdump -d`` output."""
    out, name = {}, None
    for line in asm.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_every_cython_avx2_loop_is_vectorized():
    """Both loops of every float32 variant in the AVX2 build, the serial one (inlined into the
    entry point) and the OpenMP one (``._omp_fn``), use packed 8-wide instructions: packed
    square roots where the rule takes one, packed arithmetic (or packed moves, for swap)
    elsewhere.  A loop gcc fails to vectorize shows up here (it did: amsgrad's serial loop,
    while the rule returned a ctuple).  A reduction's loops are in its block function, which
    both entry points call: its element loop has the packed math, and its float64 lanes are
    added with packed double additions (gcc packs them; a single running sum stays scalar)."""
    try:
        from fastopt.kernels import _cython_avx2
    except ImportError:
        pytest.skip("no AVX2 build here")
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", _cython_avx2.__file__],
                         capture_output=True, text=True, check=True).stdout
    funcs = _functions(asm)
    missing = []
    for name, sig in RULES.items():
        fn = getattr(rules, name)
        src = inspect.getsource(fn).replace(fn.__doc__ or "", "")   # the code, not the docs
        # (the 8-wide register is the destination; the source may be memory)
        # (assign's serial loop is a copy: gcc calls memmove for it)
        packed = (r"vsqrtps\s+[^\n]*%ymm" if "sqrt(" in src else
                  r"vmovups\s+%ymm" if name == "swap" else
                  r"vmovups\s+%ymm|<memmove@plt>" if name == "assign" else
                  r"v(?:mul|add|sub)ps\s+%ymm")
        for flags in _codegen.flag_variants(sig):
            variant = _codegen.variant_name(sig, "f32", flags)
            # a reduction's element loop is its block function (both loops call it)
            serial = [v for k, v in funcs.items() if re.search(
                rf"(_\d+{variant}|__{variant}_block(\.constprop\.\d+)?)$", k)]
            threaded = [v for k, v in funcs.items() if k.endswith(f"_{variant}._omp_fn.0")]
            if sig.grid:    # a grid rule's loops: its block function, which gcc may inline
                serial = threaded = [v for k, v in funcs.items()
                                     if re.search(rf"[0-9_]{variant}(_block|\.|$)", k)]
            if sig.sums:
                threaded = serial
                # (a grid rule folds 64 terms into 8 partials in float32 first; gcc keeps its 8
                # float64 lanes in scalar registers: 8 additions per 64 elements, not checked)
                if sig.sums and not sig.grid and not any(re.search(r"vaddpd\s+[^\n]*%ymm", b) for b in serial):
                    missing.append(f"{variant} (float64 lanes)")
            for kind, bodies in (("serial", serial), ("threaded", threaded)):
                if not bodies or not any(re.search(packed, b) for b in bodies):
                    missing.append(f"{variant} ({kind})")
    assert not missing, f"loops without packed math: {missing}"


def test_numba_binds_compile_only_the_loop_their_rows_use(monkeypatch):
    """A bound Numba kernel compiles the threaded loop only for rows of PARALLEL_THRESHOLD
    elements or more and the serial one only below (the threaded compile is 3-4x the serial
    one: compiling both at bind made most of the test suite's time); the threshold is still
    read at call time, and either loop gives the same bits.  A bfloat16 storage layout, so the
    variant is generated for this test alone and nothing else has compiled it."""
    import ml_dtypes
    from fastopt.kernels import formats as F, get_backend
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 1 << 40)
    be = get_backend("numba")
    k = be.kernel("lion", np.float32, (True,),
                  formats=(F.BF16, F.F32, F.BF16), rounding="stochastic")
    par, ser = k.impl
    n = 3000
    rng = np.random.default_rng(3)

    def arrays():
        p = rng.standard_normal(n).astype(np.float32)
        return [p.astype(ml_dtypes.bfloat16), p * np.float32(0.1),
                (p * 0.5).astype(ml_dtypes.bfloat16)]

    a = arrays()
    b = [x.copy() for x in a]
    scalars = [0.5] * len(k.sig.scalars)
    call = be.bind(k, [a], bases=[7], seed=2)
    assert (len(par.overloads), len(ser.overloads)) == (0, 1)
    call(scalars, step=4)
    assert len(par.overloads) == 0
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 1)          # read at call time
    be.bind(k, [b], bases=[7], seed=2)(scalars, step=4)
    assert len(par.overloads) == 1
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
