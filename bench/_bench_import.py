"""Load a module of bench/ by file name, once: the one already imported (pytest imports
bench/conftest.py and the bench_*.py files itself), else from its path now.  Shared by the bench
files and tests/test_bench_smoke.py so that every caller gets the same module object."""
import importlib.util
import pathlib
import sys

BENCH = pathlib.Path(__file__).resolve().parent


def sibling(filename, modname):
    path = BENCH / filename
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and pathlib.Path(f).resolve() == path:
            return mod
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
