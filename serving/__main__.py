"""``python -m serving``: run the app with HOST and PORT from the settings.

It refuses, before anything loads, to serve an open API beyond this machine (see
``serving.guard.check_exposure``). uvicorn's own ``X-Forwarded-For`` handling is off (it would
trust any local process): the guard reads the header, from the balancer only. The HTTP protocol
caps headers, their arrival time and the connections held (``serving.server``).
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from serving.guard import check_exposure
from serving.server import WebSocketProtocol, limited_http_protocol
from serving.settings import Settings

log = logging.getLogger("serving")


def main() -> None:
    settings = Settings()
    refusal = check_exposure(settings)
    if refusal:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.error(refusal)
        sys.exit(2)
    uvicorn.run(
        "serving.app:app",
        host=settings.host,
        port=settings.port,
        proxy_headers=False,
        log_level=settings.log_level.lower(),
        http=limited_http_protocol(settings),
        ws=WebSocketProtocol,
    )


if __name__ == "__main__":
    main()
