# The suite's pytest plugin lives in fixtures/; loading it here keeps it scoped to this checkout.
pytest_plugins = ("fixtures.plugin",)
