"""The ``mutualfc`` command line: ``main`` builds the parser from each command module's ``register``."""

from mutualfc.cli import coding, commands, complexity, service, train

__all__ = ["coding", "commands", "complexity", "service", "train"]
