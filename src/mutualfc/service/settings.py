"""The server's settings: command-line options travel to each uvicorn worker process as environment variables."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

ENV = "MUTUALFC_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServiceSettings:
    task: str = "yolov5n-coco"
    weights: str | None = None
    device: str = "cpu"
    codec_options: dict = field(default_factory=dict)  # e.g. {"checkpoint": ...} for a user's mutual model
    max_body_bytes: int = 8 << 20  # a container larger than this is refused (413) before it is read
    decode_timeout_s: float = 30.0  # a request whose decoding takes longer is answered 422
    max_pixels: int = 4096 * 4096  # containers announcing a larger image are refused (413) before decoding
    threads: int = 1  # torch intra-op threads per worker: processes are the unit of parallelism

    def to_env(self) -> dict[str, str]:
        return {ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> ServiceSettings:
        raw = os.environ.get(ENV)
        return cls(**json.loads(raw)) if raw else cls()
