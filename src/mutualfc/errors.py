"""Exceptions whose message is a one-line explanation for the user (the CLI prints it and exits non-zero)."""


class MutualFCError(Exception):
    """Base class: anything the user can fix (bad input, missing file, missing tool)."""


class WeightsError(MutualFCError):
    """Weights file missing, unreadable or for another model."""


class BitstreamError(MutualFCError):
    """A bitstream that is truncated, corrupted or not ours."""


class DatasetError(MutualFCError):
    """Missing/corrupt images or a bad annotations file."""


class EncoderNotFoundError(MutualFCError):
    """An external encoder (vvencapp / VTM EncoderApp) is not installed."""


class EncoderError(MutualFCError):
    """An encoder refused its input (e.g. a picture size an external encoder does not take)."""
