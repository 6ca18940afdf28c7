"""A small client for the split-inference server (standard library only: edge devices need nothing more)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from mutualfc.errors import MutualFCError


class Client:
    """``Client("http://host:8000").detect(container)`` -> the server's JSON answer."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def _call(self, path: str, data: bytes | None = None, query: dict | None = None) -> bytes:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(
            url,
            data=data,
            method="POST" if data is not None else "GET",
            headers={"Content-Type": "application/octet-stream"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 - the user's server URL
                return r.read()
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error") or e.reason
            except (ValueError, AttributeError):
                reason = e.reason
            raise MutualFCError(f"{self.url} answered {e.code}: {reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise MutualFCError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None

    def detect(self, container: bytes, min_score: float = 0.25) -> dict:
        return json.loads(self._call("/v1/detect", container, {"min_score": min_score}))

    def features(self, container: bytes) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self._call("/v1/features", container))) as z:
            return {k: z[k] for k in z.files}

    def codecs(self) -> dict:
        return json.loads(self._call("/v1/codecs"))

    def health(self) -> dict:
        return json.loads(self._call("/healthz"))
