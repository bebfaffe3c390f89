"""Where the generated Numba and numba.cuda modules live, and how they are imported.

:mod:`fastopt.kernels._codegen` writes a module's source once per source hash to
``$FASTOPT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/fastopt``, i.e. ``~/.cache/fastopt``; a
temporary folder when that is not writable), as ``fastopt_<kind>_<hash>.py``, then imports it.
Numba caches the compiled loops next to it (``__pycache__``), keyed by that file: a changed rule
gives a new hash, a new file and a fresh compile, never a stale cached loop.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

from . import _codegen

__all__ = ["cache_dir", "load", "load_source"]


def cache_dir():
    """The folder for generated modules (created if needed)."""
    base = os.environ.get("FASTOPT_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "fastopt")
    for path in (base, os.path.join(tempfile.gettempdir(), f"fastopt-{os.getuid()}"
                                    if hasattr(os, "getuid") else "fastopt")):
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    raise RuntimeError(f"no writable folder for fastopt's generated kernels (tried {base!r}; "
                       f"set FASTOPT_CACHE_DIR)")


def load(kind):
    """Import the generated module ``kind`` (``"numba"`` or ``"cuda"``), writing it first if
    this source hash has not been written yet."""
    name = f"fastopt_{kind}_{_codegen.source_hash()}"
    return load_source(name, {"numba": _codegen.numba_source,
                              "cuda": _codegen.cuda_source}[kind])


def load_source(name, source):
    """Import the module ``name`` from the cache folder, writing ``source()`` there first when
    the file does not exist (``name`` must carry the source hash)."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    path = os.path.join(cache_dir(), name + ".py")
    if not os.path.exists(path):
        text = source()
        fd, tmp = tempfile.mkstemp(prefix=name, suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod
