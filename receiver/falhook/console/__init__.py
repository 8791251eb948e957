"""The operator console: pages at /console/, a JSON API at /console/api/, a live stream of
changes, all reading and acting through the store's roles. Imported only when a console
request comes (the Lambda entry point and the CLI do not pay for Jinja2); `exposure` alone is
read at start-up."""
