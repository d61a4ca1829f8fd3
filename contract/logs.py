"""One log line per event: text (the default) or, with ``LOG_FORMAT=json``, one JSON object with
``time``, ``level``, ``logger``, ``process``, ``message``, the fields passed as ``extra`` and a
traceback as ``exception``. The supervisor wraps what nginx and Java write (``serve.log_relay``)."""

import json
import logging
from datetime import datetime

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": iso_time(record.created), "level": record.levelname, "logger": record.name,
               "process": record.process, "message": record.getMessage()}
        out.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and k not in out)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """This process's logging: every logger through one handler on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def gunicorn_logconfig(level: str = "INFO", log_format: str = "text") -> dict:
    kind = {"()": JsonFormatter} if log_format == "json" else {"format": FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"oneline": kind},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "oneline",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False}},
    }
