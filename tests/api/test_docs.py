"""Every public name of ``recae`` (``recae.__all__``) has a docstring with an example, and every example runs.

Why: a notebook user meets the API through ``help(recae.open_store)``; an example that no longer runs teaches the
wrong call. The examples run as doctests against one small home (tests/api/conftest.py): ``home``, ``ratings``
(its DataFrame), ``store`` and ``model`` (a small model trained on it) are defined for them.
"""

from __future__ import annotations

import doctest
import inspect

import numpy as np
import pandas as pd
import pytest

import recae

PUBLIC = [name for name in recae.__all__ if name != "__version__"]


def examples(obj: object) -> list[doctest.DocTest]:
    """The doctests of ``obj``'s docstring and, for a class, of its public methods (properties have none)."""
    found = doctest.DocTestFinder(recurse=True).find(obj, getattr(obj, "__name__", "recae"))
    return [test for test in found if test.examples]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring_with_an_example(name: str) -> None:
    obj = getattr(recae, name)
    assert ">>>" in (inspect.getdoc(obj) or ""), f"recae.{name} has no example in its docstring"
    if inspect.isclass(obj) and obj.__module__.startswith("recae.api"):
        for method, member in inspect.getmembers(obj, lambda m: inspect.isfunction(m) or inspect.ismethod(m)):
            if not method.startswith("_"):
                assert ">>>" in (inspect.getdoc(member) or ""), f"recae.{name}.{method} has no example"


def test_the_package_docstring_has_an_example() -> None:
    assert ">>>" in (recae.__doc__ or "")


@pytest.mark.parametrize("name", ["recae", *PUBLIC])
def test_the_examples_run(name: str, api_home) -> None:  # type: ignore[no-untyped-def]
    obj = recae if name == "recae" else getattr(recae, name)
    tests = [doctest.DocTestParser().get_doctest(recae.__doc__ or "", {}, "recae", None, 0)] if name == "recae" \
        else examples(obj)
    assert tests, f"no examples found for {name}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        test.globs = {"recae": recae, "pd": pd, "np": np, "home": api_home.home, "ratings": api_home.ratings,
                      "store": api_home.store, "model": api_home.model}
        runner.run(test, out=lambda text, name=test.name: pytest.fail(f"{name}:\n{text}", pytrace=False))
    assert runner.failures == 0
