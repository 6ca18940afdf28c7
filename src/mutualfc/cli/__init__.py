"""Command-line interface (``mutualfc --help``)."""
