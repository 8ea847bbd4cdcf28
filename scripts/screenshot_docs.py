"""Screenshots of the documentation site: its front page and the configuration reference.

    .venv/bin/python scripts/screenshot_docs.py [--out docs]

Builds the site (``mkdocs build --strict``) into a temporary folder, serves it on a free
loopback port, and takes headless Chromium screenshots of the two pages into
``docs/site_front.png`` and ``docs/site_configuration.png``. Needs Debian's ``chromium`` on
PATH (or ``--chromium PATH``); nothing leaves the machine (the theme loads no fonts from
elsewhere: ``theme.font: false`` in mkdocs.yml).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # name: (page, window height)
    "site_front.png": ("", 1000),
    "site_configuration.png": ("configuration/", 1800),
}


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[int]:
    """A static HTTP server of ``folder`` on 127.0.0.1 and a free port, stopped after."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels")
    args = parser.parse_args()
    mkdocs = Path(sys.executable).parent / "mkdocs"
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run(
            [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(site)],
            cwd=ROOT,
            check=True,
            env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        )
        with serving(site) as port:
            for name, (page, height) in PAGES.items():
                subprocess.run(
                    [
                        args.chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--user-data-dir={Path(tmp) / 'profile'}",
                        f"--window-size={args.width},{height}", "--virtual-time-budget=10000",
                        f"--screenshot={args.out / name}", f"http://127.0.0.1:{port}/{page}",
                    ],
                    check=True, capture_output=True, timeout=180,
                )  # fmt: skip
                print(args.out / name)


if __name__ == "__main__":
    main()
