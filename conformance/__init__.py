"""The conformance tests; run with `pytest --pyargs custom_ca_conformance.conformance` or `pytest conformance`."""
