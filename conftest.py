"""Checkout-only guard: the plugin loads through its pytest11 entry point once the package is installed."""

import importlib.util

import pytest

if importlib.util.find_spec("custom_ca_conformance") is None:
    raise pytest.UsageError("custom_ca_conformance is not installed: run `pip install -e .` in this checkout first")
