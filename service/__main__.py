"""``python -m service``: start the gateway (and its in-process vLLM engine) with uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from service.app import create_app
from service.settings import Settings


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=defaults.port)
    args = p.parse_args(argv)
    settings = defaults.model_copy(update={"host": args.host, "port": args.port})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="uvloop",
        http="httptools",
        access_log=False,  # per-request access logs cost latency; metrics carry the counts
    )


if __name__ == "__main__":  # vLLM spawns its engine core: the guard keeps the child from re-running main
    main()
