"""Build script: package metadata lives in pyproject.toml; this file adds the optional Cython
extension ``fastopt.kernels._cython``.

Everything here is self-contained (no package imports from the repository; PEP 517 builds run
isolated): the loop generator ``fastopt/kernels/_codegen.py`` is loaded by path.

* The ``.pyx`` is *generated* from the update rules (``fastopt/kernels/rules.py``) into
  ``build/fastopt-generated/`` at every build (rewritten only when its text changes), then
  cythonized.  Nothing generated is kept in the source tree, so an edited rule can never be
  built from an old ``.pyx`` or ``.c``; the extension records the rules' hash
  (``SOURCE_HASH``) and fastopt refuses a build whose hash differs from the installed rules.
* Cython is required to build the extension (it is in ``build-system.requires``; for
  ``--no-build-isolation`` builds the ``test`` extra installs it).  Without it the install goes
  on without the extension (fastopt then runs on Numba/NumPy) and says so.
* OpenMP: the compiler is probed with a tiny program; ``-fopenmp`` (``/openmp`` on MSVC) is added
  to the compile and link arguments only when that probe compiles and links.
* ``FASTOPT_NO_CYTHON=1`` skips the extension; ``FASTOPT_NO_OPENMP=1`` builds it without OpenMP.
* The portable build targets the baseline ISA (no ``-march``).  On x86-64, when the compiler takes
  ``-mavx2``, the same source is also built as ``fastopt.kernels._cython_avx2`` (AVX2 without
  FMA, so the arithmetic and its rounding are unchanged); ``fastopt.kernels.cython`` uses it
  only when the running CPU has AVX2.  ``FASTOPT_NO_AVX2=1`` skips that variant.  Likewise
  ``fastopt.kernels._cython_avx512`` (AVX-512 F/DQ/BW/VL, 16-lane vectors; FMA is available
  there but ``-ffp-contract=off`` keeps a*b+c unfused, so the bits are the same), used where
  the CPU has those; ``FASTOPT_NO_AVX512=1`` skips it.  ``FASTOPT_ISA_BUILDS=host`` (set by
  ``make setup``) leaves out the variants the building machine's CPU cannot run.
* The extension is optional: no Cython, a broken compiler (``CC=false``) or a failed compile
  prints a warning and the install goes on without it.
"""
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join("fastopt", "kernels")
GENERATED = os.path.join("build", "fastopt-generated")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _warn(msg):
    sys.stderr.write(f"\nWARNING (fastopt): {msg}\n\n")


def _new_compiler():
    """The compiler build_ext would use (honours CC, CFLAGS, ... like sysconfig does)."""
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    except ImportError:  # pragma: no cover - very old setuptools
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler
    cc = new_compiler()
    customize_compiler(cc)
    return cc


def _openmp_flags():
    """(compile_args, link_args) enabling OpenMP, or ([], []) if the compiler does not take them."""
    if _flag("FASTOPT_NO_OPENMP"):
        return [], []
    try:
        cc = _new_compiler()
        if cc.compiler_type == "msvc":
            flags = (["/openmp"], [])
        else:
            flags = (["-fopenmp"], ["-fopenmp"])
        tmp = tempfile.mkdtemp(prefix="fastopt-omp-")
        try:
            src = os.path.join(tmp, "omp_probe.c")
            with open(src, "w") as f:
                f.write(textwrap.dedent("""\
                    #include <omp.h>
                    int main(void) {
                        int n = 0;
                        #pragma omp parallel reduction(+:n)
                        n += 1;
                        return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
                    }
                    """))
            objs = cc.compile([src], output_dir=tmp, extra_postargs=flags[0])
            cc.link_executable(objs, "omp_probe", output_dir=tmp, extra_postargs=flags[1])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return flags
    except Exception as exc:  # noqa: BLE001 - any failure means "no OpenMP"
        _warn(f"the compiler does not accept OpenMP ({type(exc).__name__}: {exc}); "
              "building the Cython kernels single-threaded")
        return [], []


def _compiler_accepts(flags):
    try:
        cc = _new_compiler()
        tmp = tempfile.mkdtemp(prefix="fastopt-flag-")
        try:
            src = os.path.join(tmp, "flag_probe.c")
            with open(src, "w") as f:
                f.write("int main(void) { return 0; }\n")
            cc.compile([src], output_dir=tmp, extra_postargs=flags)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except Exception:  # noqa: BLE001
        return False


def _codegen():
    path = os.path.join(HERE, KERNELS, "_codegen.py")
    spec = importlib.util.spec_from_file_location("_fastopt_codegen", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_if_changed(rel, text):
    """Write ``text`` to ``rel`` (under this folder) unless it already holds exactly that: an
    unchanged file keeps its mtime, so nothing is rebuilt needlessly."""
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return rel
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return rel


def _host_only():
    """``FASTOPT_ISA_BUILDS=host`` (``make setup`` sets it): build only the ISA variants this
    machine's CPU runs -- a build it cannot load is compile time for nothing (each variant is
    minutes of gcc).  The default, ``all``, builds every variant the compiler takes (wheels)."""
    return os.environ.get("FASTOPT_ISA_BUILDS", "all").strip().lower() == "host"


def _cpu_runs(*features):
    """Whether this CPU has ``features`` (NumPy's names, as ``fastopt.kernels.cython`` checks
    them at import); True when NumPy is not importable here (then nothing is left out)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return True
    return all(__cpu_features__.get(f, False) for f in features)


def _avx2_wanted():
    if _flag("FASTOPT_NO_AVX2") or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if _host_only() and not _cpu_runs("AVX2"):
        return False
    return _compiler_accepts(["-mavx2"])


AVX512_FLAGS = ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
                "-mprefer-vector-width=512"]


def _avx512_wanted():
    if _flag("FASTOPT_NO_AVX512") or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if _host_only() and not _cpu_runs("AVX2", "AVX512F", "AVX512DQ", "AVX512BW", "AVX512VL"):
        return False
    return _compiler_accepts(AVX512_FLAGS)


def _extensions():
    if _flag("FASTOPT_NO_CYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed; skipping the optional extension fastopt.kernels._cython "
              "(install Cython, e.g. `pip install -e .[test]`, and rebuild)")
        return []
    try:
        pyx = _codegen().cython_source()
    except Exception as exc:  # noqa: BLE001 - a broken rule must not break the install
        _warn(f"generating the Cython kernels failed ({type(exc).__name__}: {exc})")
        return []

    omp_compile, omp_link = _openmp_flags()
    try:
        msvc = _new_compiler().compiler_type == "msvc"
    except Exception:  # noqa: BLE001
        msvc = False
    # -fno-math-errno: sqrt/sqrtf need not set errno, so gcc can vectorize them (results are
    # unchanged: IEEE sqrt is exact-rounded either way; NaN still comes out for negative input).
    # -ffp-contract=off: never fuse a*b+c (targets with FMA in their baseline would otherwise
    # round differently from the NumPy reference).
    opt = ["/O2"] if msvc else ["-O3", "-fno-math-errno", "-ffp-contract=off"]

    def ext(name, src, extra=()):
        return Extension(name, sources=[src], include_dirs=[KERNELS],
                         extra_compile_args=opt + list(extra) + omp_compile,
                         extra_link_args=omp_link, optional=True)

    exts = [ext("fastopt.kernels._cython",
                _write_if_changed(os.path.join(GENERATED, "_cython.pyx"), pyx))]
    if not msvc and _avx2_wanted():
        # -mavx2 only: no -mfma, so a*b+c is never contracted and results stay bitwise equal.
        exts.append(ext("fastopt.kernels._cython_avx2",
                        _write_if_changed(os.path.join(GENERATED, "_cython_avx2.pyx"), pyx),
                        ["-mavx2"]))
    if not msvc and _avx512_wanted():
        # FMA comes with AVX-512F; -ffp-contract=off (in opt) keeps every a*b+c unfused
        exts.append(ext("fastopt.kernels._cython_avx512",
                        _write_if_changed(os.path.join(GENERATED, "_cython_avx512.pyx"), pyx),
                        AVX512_FLAGS))
    try:
        # the variants' .pyx are cythonized in parallel too (about 30 s each)
        exts = cythonize(exts, compiler_directives={"language_level": "3"}, quiet=True,
                         nthreads=0 if msvc else min(len(exts), os.cpu_count() or 1))
    except Exception as exc:  # noqa: BLE001
        _warn(f"cythonize failed ({type(exc).__name__}: {exc}); skipping fastopt.kernels._cython")
        return []
    for e in exts:          # cythonize() drops Extension(optional=True)
        e.optional = True
    return exts


class optional_build_ext(build_ext):
    """build_ext that turns any failure into a warning: the extension is an optional speed-up.
    The baseline, AVX2 and AVX-512 builds compile in parallel (one job per core)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001
            _warn(f"building the optional extension failed ({type(exc).__name__}: {exc}); "
                  "fastopt will use its Numba/NumPy backends")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _warn(f"building {ext.name} failed ({type(exc).__name__}: {exc}); "
                  "fastopt will use its Numba/NumPy backends")

    def copy_extensions_to_source(self):
        # Editable/inplace installs copy the built library next to the sources; skip what failed.
        exts, self.extensions = self.extensions, [
            e for e in self.extensions if os.path.exists(self.get_ext_fullpath(e.name))
            or os.path.exists(os.path.join(self.build_lib, self.get_ext_filename(e.name)))]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = exts

    def get_outputs(self):
        # A wheel must not list a library that was never built.
        return [p for p in super().get_outputs() if os.path.exists(p)]


setup(ext_modules=_extensions(), cmdclass={"build_ext": optional_build_ext})
