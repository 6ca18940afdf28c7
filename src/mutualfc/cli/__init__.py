"""The ``mutualfc`` command line: ``main`` builds the parser from each command module's ``register``."""

from mutualfc.cli import coding, commands, service, train

__all__ = ["coding", "commands", "service", "train"]
