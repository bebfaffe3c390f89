"""Run-time settings, read from ``FASTOPT_*`` environment variables at import and by ``_reset()``.

Kernels read these at call time (not at compile time), so tests can shrink them, e.g. to cover
multi-block CUDA launches or the parallel CPU path on tiny arrays.

``PARALLEL_THRESHOLD``
    Buffers with at least this many elements use the multi-threaded CPU kernels; smaller ones the
    serial variant (thread wake-up costs more than it saves on small buffers).
    ``FASTOPT_PARALLEL_THRESHOLD``, default 65536: the measured serial/parallel crossover on 2
    cores is ~16K elements for Adam and 46-65K for SGD (bench/README.md, test_threshold).
``CUDA_THREADS_PER_BLOCK``
    Threads per block of the CUDA kernels. ``FASTOPT_CUDA_THREADS_PER_BLOCK``, default 256.
``CUDA_BLOCKS_PER_SM``
    The grid is ``blocks_per_sm * SM count`` blocks (capped by the work), a grid-stride loop does
    the rest. ``FASTOPT_CUDA_BLOCKS_PER_SM``, default 4.
``CUDA_MAX_BLOCKS``
    Optional cap on the grid size (0: none). ``FASTOPT_CUDA_MAX_BLOCKS``; tests set it small.
``HUGE_PAGES``
    On Linux, ``fastopt.torch`` asks the kernel to back the CPU buffers it allocates (optimizer
    state, ``flatten=True``'s flat parameters and gradients) of at least 4 MiB with transparent
    huge pages (``madvise(MADV_HUGEPAGE)`` before their first touch), as NumPy does for its own
    arrays and torch only with ``THP_MEM_ALLOC_ENABLE=1``: fewer page walks on every stream of
    the step.  ``FASTOPT_HUGE_PAGES``, default 1; 0 turns it off.
"""
from __future__ import annotations

import os

#: fastmath flags for the CPU kernels: only ``nsz``.  Not ``nnan``/``ninf``, so ``isfinite``
#: checks survive and NaN/Inf propagate exactly as in NumPy; not ``reassoc``, which lets LLVM
#: factor ``p*a + c*(g + d*p)`` into ``p*(a + c*d) + ...`` and turn torch's ``inf - inf = NaN``
#: into ``inf`` (ASGD); and not ``contract``/``arcp``/``afn`` either: with them LLVM rounded the
#: vectorized loop body differently from its scalar remainder (one element of an Adadelta step
#: differed by an ulp between an Arena and separate arrays, where it falls in the other part of
#: the loop), so a result depended on the element's position.  IEEE operations vectorize the
#: same (packed ``vdivps``/``vsqrtps``) and round the same everywhere.
FASTMATH_FLAGS = frozenset({"nsz"})

PARALLEL_THRESHOLD = 65536
CUDA_THREADS_PER_BLOCK = 256
CUDA_BLOCKS_PER_SM = 4
CUDA_MAX_BLOCKS = 0
HUGE_PAGES = True


def _int(name, default, minimum=0):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _reset():
    """Re-read every setting from the environment (tests call this after monkeypatching)."""
    global PARALLEL_THRESHOLD, CUDA_THREADS_PER_BLOCK, CUDA_BLOCKS_PER_SM, CUDA_MAX_BLOCKS
    global HUGE_PAGES
    PARALLEL_THRESHOLD = _int("FASTOPT_PARALLEL_THRESHOLD", 65536)
    CUDA_THREADS_PER_BLOCK = _int("FASTOPT_CUDA_THREADS_PER_BLOCK", 256, 1)
    CUDA_BLOCKS_PER_SM = _int("FASTOPT_CUDA_BLOCKS_PER_SM", 4, 1)
    CUDA_MAX_BLOCKS = _int("FASTOPT_CUDA_MAX_BLOCKS", 0)
    HUGE_PAGES = bool(_int("FASTOPT_HUGE_PAGES", 1))


_reset()
