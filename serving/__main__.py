"""``python -m serving``: run the app with HOST and PORT from the settings."""

from __future__ import annotations

import uvicorn

from serving.settings import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        "serving.app:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
