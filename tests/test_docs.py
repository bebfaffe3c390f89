"""The docs derived from the specs stay true: every optimizer's docstring example runs, the
README's optimizer table shows each class's real signature, torch equivalent and bytes."""
import doctest
import inspect
import pathlib
import re

import pytest

import fastopt
import fastopt.averaging
from fastopt.specs import SPECS

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_docstring_example_runs(spec):
    cls = getattr(fastopt, spec.name)
    assert cls.__doc__ == spec.docstring()
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(cls, spec.name, globs={})
    assert tests and tests[0].examples
    for t in tests:
        runner.run(t)
    assert runner.failures == 0


def test_weight_ema_example_runs():
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner()
    for t in finder.find(fastopt.WeightEMA, "WeightEMA", globs=vars(fastopt.averaging)):
        runner.run(t)
    assert runner.failures == 0


def _readme_row(name):
    rows = [line for line in README.splitlines() if line.startswith(f"| `{name}(")]
    assert len(rows) == 1, f"README has {len(rows)} table rows for {name}"
    return rows[0]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_readme_table_matches_the_classes(spec):
    row = _readme_row(spec.name)
    shown = re.match(r"\| `\w+\((.*?)\)` \|", row).group(1)
    sig = inspect.signature(getattr(fastopt, spec.name).__init__)
    parts, kw = [], False
    for name, p in sig.parameters.items():
        if name in ("self", "params", "backend", "nonfinite", "state_dtype", "rounding", "seed",
                    "min_8bit_size", "max_grad_norm"):
            continue
        if p.kind == p.KEYWORD_ONLY and not kw:
            parts.append("*")
            kw = True
        parts.append(str(p))
    assert shown == ", ".join(parts)
    if spec.torch:
        assert f"`{spec.torch}`" in row
    assert f"| {spec.bytes_per_element(spec.defaults())}" in row
