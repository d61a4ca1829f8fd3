"""Media types we read and write, and Accept negotiation."""

from handlers.errors import NotAcceptable

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
TEXT = "text/plain"
EVENT_STREAM = "text/event-stream"

# Other spellings callers use for the same thing.
ALIASES = {
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/ndjson": JSONLINES,
}
READABLE = (JSON, JSONLINES, CSV, TEXT)
WRITABLE = (JSON, JSONLINES, CSV, TEXT)


def parse(header: str | None) -> tuple[str | None, dict[str, str]]:
    """``'Text/Plain; charset=latin-1'`` -> ``('text/plain', {'charset': 'latin-1'})``."""
    if not header or not header.strip():
        return None, {}
    media_type, *rest = header.split(";")
    params = {}
    for item in rest:
        key, _, value = item.partition("=")
        if key.strip():
            params[key.strip().lower()] = value.strip().strip('"')
    media_type = media_type.strip().lower()
    return ALIASES.get(media_type, media_type), params


def negotiate(accept: str | None, request_type: str, default: str | None,
              writable: tuple[str, ...] = WRITABLE) -> str:
    """Pick the response media type.

    No Accept (or ``*/*``): ``default`` (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT) if set, else
    the request's own type when we can write it, else JSON. Otherwise the acceptable type
    with the highest q-value, in the caller's order.
    """
    if default:
        default = parse(default)[0]
        if default not in writable:
            raise NotAcceptable(f"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT={default!r} is not a type this "
                                f"server writes; supported: {', '.join(writable)}")
    fallback = default or (request_type if request_type in writable else JSON)
    if not accept or not accept.strip():
        return fallback
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media_type, params = parse(item)
        if not media_type:
            continue
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0:
            ranked.append((-quality, position, media_type))
    for _, _, media_type in sorted(ranked):
        if media_type == "*/*":
            return fallback
        if media_type in writable:
            return media_type
        if media_type.endswith("/*"):
            family = media_type[:-1]
            if fallback.startswith(family):
                return fallback
            for candidate in writable:
                if candidate.startswith(family):
                    return candidate
    raise NotAcceptable(f"cannot produce any of Accept: {accept!r:.200}; "
                        f"supported: {', '.join(writable)}")
