"""falhook on Modal: `falhook serve`'s app (receiver, worker, console) as a Modal web
endpoint, on a PostgreSQL store shared by every container (docs/deploy.md).

    modal secret create falhook FALHOOK_PUBLIC_URL=https://WORKSPACE--falhook-web.modal.run \\
        FALHOOK_DATABASE_URL=postgresql://... FAL_KEY=... \\
        AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... S3_BUCKET=...
    modal deploy infra/modal/app.py

Modal runs the ASGI lifespan of the app `web` returns: falhook's store, keys, worker and
reconciliation start with each container and stop with it (in-flight deliveries are handed
back). `create` is the factory; the tests serve it under uvicorn with its lifespan.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import modal

CONFIG = Path(__file__).with_name("falhook.toml")
REMOTE_CONFIG = "/root/falhook.toml"

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("falhook[postgres,s3]")  # or your wheel: .add_local_python_source(...)
    .env({"FALHOOK_CONFIG": REMOTE_CONFIG})
    .add_local_file(CONFIG, REMOTE_CONFIG)
)
app = modal.App("falhook", image=image)


def create() -> Any:
    """falhook's ASGI app from $FALHOOK_CONFIG (its `.lifespan` is served with it)."""
    import falhook

    return falhook.create_app(falhook.load_settings(os.environ["FALHOOK_CONFIG"]))


@app.function(
    secrets=[modal.Secret.from_name("falhook")],
    min_containers=1,  # the worker delivers between requests: keep one container up
    scaledown_window=300,
    timeout=600,
)
@modal.concurrent(max_inputs=100)  # webhooks are answered in milliseconds
@modal.asgi_app()
def web() -> Any:
    return create()
