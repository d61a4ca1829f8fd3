"""LOG_FORMAT=json: every line the server writes is one JSON object, whichever child wrote it.

Each child's stdout and stderr come through pipes, one line per write: a JSON object passes as
it is; nginx's error log and Java's log4j lines (``container/log4j2.xml``) are parsed into
``time``, ``level``, ``logger``, ``message``; anything else is wrapped as a message.
"""

import json
import os
import re
import threading
import time
from datetime import datetime

from contract.logs import iso_time

NGINX_LINE = re.compile(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(\w+)\] (\d+)#\d+: (.*)")
NGINX_LEVELS = {"debug": "DEBUG", "info": "INFO", "notice": "INFO", "warn": "WARNING", "error": "ERROR",
                "crit": "CRITICAL", "alert": "CRITICAL", "emerg": "CRITICAL"}
# log4j2.xml's pattern: %d{ISO8601} [%-5p] %t %c - %m%n
LOG4J_LINE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d),(\d{3}) \[(\w+) *\] (\S+) (\S+) - (.*)")
LOG4J_LEVELS = {"TRACE": "DEBUG", "DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARNING", "ERROR": "ERROR",
                "FATAL": "CRITICAL"}


def as_object(text: str) -> dict | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def local_time(text: str, fmt: str, millis: int = 0) -> str:
    stamp = datetime.strptime(text, fmt).replace(microsecond=millis * 1000)
    return stamp.astimezone().isoformat(timespec="milliseconds")


class LineParser:
    """One child stream's lines -> JSON objects. A line that does not start a record (a Java
    stack trace's next line) keeps the level and logger of the record it belongs to."""

    def __init__(self, source: str, stream: str):
        self.source, self.stream = source, stream
        self.level = "INFO" if stream == "stdout" else "WARNING"
        self.logger = source
        self.extra: dict = {}  # what a continuation line keeps of its record: the thread

    def parse(self, text: str) -> dict:
        obj = as_object(text)
        if obj is not None:
            return obj
        if m := NGINX_LINE.fullmatch(text):
            self.level, self.logger, self.extra = NGINX_LEVELS.get(m[2], "ERROR"), "nginx.error", {}
            return {"time": local_time(m[1], "%Y/%m/%d %H:%M:%S"), "level": self.level, "logger": self.logger,
                    "process": int(m[3]), "message": m[4]}
        if m := LOG4J_LINE.fullmatch(text):
            inner = as_object(m[6])  # an MMS worker's own JSON line, as Java logs it
            if inner is not None:
                return {**inner, "thread": m[4]}
            self.level, self.logger, self.extra = LOG4J_LEVELS.get(m[3], "INFO"), m[5], {"thread": m[4]}
            return {"time": local_time(m[1], "%Y-%m-%dT%H:%M:%S", int(m[2])), "level": self.level,
                    "logger": self.logger, "thread": m[4], "message": m[6]}
        return {"time": iso_time(time.time()), "level": self.level, "logger": self.logger, "message": text,
                **self.extra}


class LogRelay:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.lock = threading.Lock()  # one line at a time, whichever child it came from
        self.threads: list[threading.Thread] = []

    def pipes(self, source: str) -> dict:
        """Popen's ``stdout`` and ``stderr`` for child ``source`` (none when disabled); call
        ``started(those)`` once the child runs."""
        if not self.enabled:
            return {}
        out = {}
        for stream, fd in (("stdout", 1), ("stderr", 2)):
            read_end, write_end = os.pipe()
            thread = threading.Thread(target=self._copy, args=(read_end, fd, LineParser(source, stream)),
                                      name=f"log-{source}-{stream}", daemon=True)
            thread.start()
            self.threads.append(thread)
            out[stream] = write_end
        return out

    @staticmethod
    def started(pipes: dict) -> None:
        for fd in pipes.values():
            os.close(fd)  # the child has its copy: EOF comes when it (and its children) exit

    def _copy(self, read_end: int, out_fd: int, parser: LineParser) -> None:
        with open(read_end, "rb") as lines:
            for raw in lines:
                text = raw.decode(errors="replace").rstrip("\r\n")
                if not text.strip():
                    continue
                try:
                    line = json.dumps(parser.parse(text), ensure_ascii=False)
                except (TypeError, ValueError):  # e.g. a line that looks like nginx's with an invalid date
                    line = json.dumps({"time": iso_time(time.time()), "level": parser.level,
                                       "logger": parser.source, "message": text}, ensure_ascii=False)
                data = (line + "\n").encode()
                with self.lock:
                    while data:
                        data = data[os.write(out_fd, data):]

    def drain(self, timeout_s: float = 1.0) -> None:
        """Let the last lines of children that have exited come out."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
