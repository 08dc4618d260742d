"""The ``aloe`` command line: one module per verb."""
