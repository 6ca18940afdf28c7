"""Latent codecs aware of the skip mask (CompressAI's latent-codec API: ``forward`` for training, ``compress`` /
``decompress`` for real bits)."""

from mutualfc.latent_codecs.hyper import MaskedHyperLatentCodec
from mutualfc.latent_codecs.hyperprior import MaskedHyperpriorLatentCodec, MaskedParams, masked_hyperprior_codec

__all__ = ["MaskedHyperLatentCodec", "MaskedHyperpriorLatentCodec", "MaskedParams", "masked_hyperprior_codec"]
