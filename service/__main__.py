"""``python -m service``: start the gateway (and its in-process vLLM engine) with uvicorn.

Exit status: 0 after a normal stop (SIGTERM/SIGINT); 75 (EX_TEMPFAIL, ``app.EXIT_ENGINE_DEAD``) when the vLLM
engine core died, so that a supervisor restarts the process; 1 when start-up failed.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from service.app import create_app
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=defaults.port)
    args = p.parse_args(argv)
    settings = defaults.model_copy(update={"host": args.host, "port": args.port})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            loop="uvloop",
            http="httptools",
            access_log=False,  # per-request access logs cost latency; metrics carry the counts
            timeout_graceful_shutdown=int(max(settings.max_request_timeout_s, 5.0)),
        )
    )

    def request_shutdown() -> None:
        server.should_exit = True  # uvicorn's own graceful stop: finish in-flight requests, run the lifespan's end

    app.state.request_shutdown = request_shutdown
    server.run()
    if app.state.exit_code:
        return int(app.state.exit_code)
    return 0 if server.started else 1


if __name__ == "__main__":  # vLLM spawns its engine core: the guard keeps the child from re-running main
    sys.exit(main())
