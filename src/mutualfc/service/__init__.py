"""Split inference over HTTP: the server (``create_app``, ``mutualfc serve``) and its client."""

from mutualfc.service.client import Client, ServerError
from mutualfc.service.settings import ServiceSettings

__all__ = ["Client", "ServerError", "ServiceSettings"]
