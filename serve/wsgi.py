"""The WSGI app gunicorn serves. Settings come from the supervisor, read once."""

import os

from serve.app import create_app
from serve.settings import Settings

settings = Settings.from_json(os.environ["SERVE_SETTINGS"])
app = create_app(settings, preload=os.environ.get("SERVE_PRELOAD", "1") == "1")
