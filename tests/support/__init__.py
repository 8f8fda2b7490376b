"""Helpers of the tests alone: the built wheels in fresh venvs, and the code blocks of the docs. What the
tests share with the benchmarks, the demo and the training tools is in ``devkit/``."""
