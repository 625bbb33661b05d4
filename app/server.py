"""The uvicorn server with the service's shutdown order."""

from __future__ import annotations

from types import FrameType

import uvicorn

from app.runtime import Runtime


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, readiness and new requests turn 503 at once; uvicorn then stops
    accepting connections and waits up to the grace period for in-flight requests, and the
    app's shutdown lets the workers finish what is queued."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runtime.begin_shutdown()
        super().handle_exit(sig, frame)
