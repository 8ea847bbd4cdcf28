"""A screenshot of the MLflow registry page of the demo model, for the README.

    .venv/bin/python scripts/screenshot_registry.py [--out docs/registry_versions.png]

On a fresh temporary sqlite store: trains the demo model (mlflow.yml, data/cardio.csv) twice
with few epochs (the second with another latent size, so that its review has settings to
compare), registers both, promotes them through the gate in turn, starts ``mlflow server`` on
a free loopback port, takes a headless Chromium screenshot of the registered model's page
(its versions table with their tags and aliases), stops the server and writes the PNG.

Needs Debian's ``chromium`` on PATH (or ``--chromium PATH``); nothing leaves the machine
(telemetry off, the server on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_register_promote(store: Path, epochs: int) -> str:
    """Two versions of the demo model in ``store``; the registered model's name."""
    sys.path.insert(0, str(ROOT))
    from vae_core.foundations.config import load_config
    from vae_core.kinds.choice import load_dataset
    from vae_core.steps.pipeline import held_out
    from vae_core.steps.promotion import measure_on
    from vae_core.steps.training import train_and_evaluate
    from vae_core.tracking import registry

    for latent_dim in (4, 8):
        overrides = {
            "tracking": {
                "uri": f"sqlite:///{store / 'mlflow.db'}",
                "artifact_location": str(store / "mlartifacts"),
            },
            "training": {"epochs": epochs},
            "model": {"latent_dim": latent_dim},
        }
        cfg = load_config(ROOT / "mlflow.yml", overrides)
        source = str(cfg.path(cfg.data.train_path))
        table = load_dataset(source, cfg)
        target = registry.TrackingTarget.from_config(cfg)
        run_id = registry.start_training_run(target, cfg, source)
        outcome = train_and_evaluate(table, cfg, store / f"run-{latent_dim}")
        registry.log_training_run(target, run_id, cfg, table, outcome, source)
        ref = registry.register_challenger(target, run_id)
        decision = registry.promote_challenger(
            target,
            cfg.promotion,
            measure_on(*held_out(table, cfg.split)),
            data_description=f"the test split of {source}",
        )
        print(f"version {ref.version}: {decision.outcome}", flush=True)
    return target.model_name


def serve(store: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over ``store``, once /health answers."""
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    command += [
        "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "mlartifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(store / "server.log", "wb")  # open for the server's lifetime
    server = subprocess.Popen(
        command, env=os.environ | OFFLINE, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    import requests

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = (store / "server.log").read_text()[-2000:]
            raise RuntimeError(f"mlflow server exited: {tail}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop(server)
    raise RuntimeError("mlflow server did not answer /health within 120 s")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (uvicorn is its child), SIGKILL if it lingers."""
    with_group = os.getpgid(server.pid)
    os.killpg(with_group, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(with_group, signal.SIGKILL)
        server.wait()


# On a fresh browser profile and a local server the UI opens its assistant panel, a third of
# the page, by itself; these keys (the UI's own, in localStorage) say it was opened and closed.
_ASSISTANT_CLOSED = (
    "<script>localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');</script>"
)


@contextlib.contextmanager
def quiet_assistant(port: int) -> Iterator[int]:
    """A loopback proxy in front of the server on ``port`` that adds ``_ASSISTANT_CLOSED``
    to the page's HTML; its port. Everything else passes through unchanged."""
    import requests

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._forward("GET")

        def do_POST(self) -> None:
            self._forward("POST")

        def _forward(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            got = requests.request(
                method, f"http://127.0.0.1:{port}{self.path}", headers=headers,
                data=self.rfile.read(length) if length else None, timeout=60,
            )  # fmt: skip
            body = got.content
            if got.headers.get("content-type", "").startswith("text/html"):
                body = body.replace(b"<head>", b"<head>" + _ASSISTANT_CLOSED.encode(), 1)
            self.send_response(got.status_code)
            for key in ("content-type", "cache-control"):
                if key in got.headers:
                    self.send_header(key, got.headers[key])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def screenshot(chromium: str, url: str, out: Path, profile: Path) -> None:
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--window-size=1600,900",
            "--virtual-time-budget=15000", f"--screenshot={out}", url,
        ],
        check=True, capture_output=True, timeout=120, env=os.environ | OFFLINE,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "registry_versions.png"))
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per version")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the temporary store, not the caller's
    with tempfile.TemporaryDirectory(prefix="registry-shot-") as tmp:
        store = Path(tmp)
        name = train_register_promote(store, args.epochs)
        port = free_port()
        server = serve(store, port)
        try:
            shot = store / "shot.png"
            with quiet_assistant(port) as front:
                url = f"http://127.0.0.1:{front}/#/models/{name}"
                screenshot(args.chromium, url, shot, store / "chromium-profile")
        finally:
            stop(server)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
