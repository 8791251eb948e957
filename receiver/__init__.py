"""falhook's receiver: verified, durable intake of fal.ai webhooks and their delivery."""

__version__ = "0.1.0"
