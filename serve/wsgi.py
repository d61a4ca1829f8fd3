"""The WSGI app gunicorn serves, over the backend the settings choose; settings come from the
supervisor, read once."""

import os

from contract.settings import Settings
from serve import app as front

settings = Settings.from_json(os.environ["SERVE_SETTINGS"])
if settings.stack == "flask":
    from serve.local import LocalBackend
    backend = LocalBackend(settings)
    backend.load()  # reads the model (in gunicorn's master when it preloads); runs nothing
else:
    from container.backend import MmsBackend
    backend = MmsBackend(settings)
app = front.init(settings, backend)
