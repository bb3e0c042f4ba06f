"""The reliability suite: real worker processes under crashes, signals and bad input.

A package (unlike the rest of ``tests/``) so that ``benchmarks/chaos.py`` can import the
very scenarios the tests run: ``from reliability import scenarios`` with ``tests/`` on
``sys.path``. Run it alone with ``pytest -m reliability``.
"""
