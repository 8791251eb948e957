"""falhook: verified, durable intake of fal.ai webhooks and their delivery to sinks.

    from falhook import create_app, load_settings
    app = create_app(load_settings("falhook.toml"))     # an ASGI app: falhook serve's own
    # mounted in your own: FastAPI(lifespan=app.lifespan).mount("/fal", app)

    verifier = WebhookVerifier(jwks_url=..., tolerance=300)   # in a route of your own
    webhook = await verifier.averify(request.headers, body)  # or .verify(...)

The public names below are imported on first use, so `import falhook.sinks` (a sink's only
dependency) and the Lambda entry point pay only for what they use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_PUBLIC = {
    "create_app": "falhook.app",
    "Settings": "falhook.config",
    "ConfigError": "falhook.config",
    "load_settings": "falhook.config",
    "Runtime": "falhook.runtime",
    "open_runtime": "falhook.runtime",
    "WebhookVerifier": "falhook.intake.verifier",
    "Webhook": "falhook.intake.verifier",
    "VerificationError": "falhook.intake.verify",
}
__all__ = [
    "ConfigError",
    "Runtime",
    "Settings",
    "VerificationError",
    "Webhook",
    "WebhookVerifier",
    "__version__",
    "create_app",
    "load_settings",
    "open_runtime",
]

if TYPE_CHECKING:
    from falhook.app import create_app
    from falhook.config import ConfigError, Settings, load_settings
    from falhook.intake.verifier import Webhook, WebhookVerifier
    from falhook.intake.verify import VerificationError
    from falhook.runtime import Runtime, open_runtime


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'falhook' has no attribute {name!r}")
    return getattr(import_module(module), name)
