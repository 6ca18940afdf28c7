"""A small client for the split-inference server (standard library only: edge devices need nothing more)."""

from __future__ import annotations

import http.client
import io
import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from mutualfc.errors import MutualFCError


def _reason(body: bytes, fallback: str) -> str:
    """The one-line ``{"error": ...}`` of a server's refusal, else the HTTP reason phrase."""
    try:
        return json.loads(body).get("error") or fallback
    except (ValueError, AttributeError):
        return fallback


class ServerError(MutualFCError):
    """The server refused a request: ``status`` is its HTTP status, the message its one-line reason."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


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
            raise ServerError(f"{self.url} answered {e.code}: {_reason(e.read(), e.reason)}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if data is not None and isinstance(reason, (BrokenPipeError, ConnectionResetError)):
                verdict = self._verdict(url, len(data))  # the server may have refused the body and closed
                if verdict is not None:
                    raise ServerError(f"{self.url} answered {verdict[0]}: {verdict[1]}", verdict[0]) from None
            raise MutualFCError(f"cannot reach {self.url}: {reason}") from None

    def _verdict(self, url: str, size: int) -> tuple[int, str] | None:
        """A server that refuses a body from its Content-Length (over its size limit) answers and closes while the
        body is still being sent, which the sender sees as a broken pipe. Announcing the same request with
        ``Expect: 100-continue`` and no body gets that answer: -> (status, reason), or None when the server would
        take the body (it says 100 Continue, or nothing within a few seconds)."""
        u = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=min(self.timeout, 5.0))
        try:
            conn.putrequest("POST", u.path + (f"?{u.query}" if u.query else ""))
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.putheader("Expect", "100-continue")
            conn.endheaders()
            r = conn.getresponse()  # skips a 100 Continue and then waits for the body: a timeout
            return (r.status, _reason(r.read(), r.reason)) if r.status >= 400 else None
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def detect(self, container: bytes, min_score: float = 0.25) -> dict:
        if not 0 <= min_score <= 1:  # what the server would refuse, refused before the request
            raise MutualFCError(f"min_score must be in 0..1, got {min_score:g}")
        return json.loads(self._call("/v1/detect", container, {"min_score": min_score}))

    def features(self, container: bytes) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self._call("/v1/features", container))) as z:
            return {k: z[k] for k in z.files}

    def codecs(self) -> dict:
        return json.loads(self._call("/v1/codecs"))

    def health(self) -> dict:
        return json.loads(self._call("/healthz"))
