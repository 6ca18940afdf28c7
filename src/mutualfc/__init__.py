"""mutualfc: feature coding for machines (learnt mutual feature compression and standard anchors)."""

__version__ = "0.1.0"
