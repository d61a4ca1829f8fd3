"""JSON request bodies, parsed strictly: every way a hostile body can break ``json.loads``
or what runs after it becomes a ``BadRequest`` that says what is wrong.

Refused: nesting deeper than MAX_JSON_DEPTH (``json.loads`` would raise RecursionError, and
so would any recursive walk of the result), duplicate keys (which one counts would be a
guess), and integers of over 308 digits (beyond a double: ``float()`` raises OverflowError
on them, and Python refuses to convert one of over 4,300 digits at all). ``NaN``,
``Infinity`` and floats that overflow to infinity pass, as in Python's json: the parameter
checks refuse them by name ("parameter 'temperature' must be finite").
"""

import json
from typing import Any

from handlers.errors import BadRequest

# Far deeper than any request needs, far below Python's recursion limit.
MAX_JSON_DEPTH = 64


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:80]!r}")
            seen.add(key)
    return obj


def _integer(text: str) -> int:
    if len(text) > 308 + text.startswith("-"):
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def depth(obj: Any) -> int:
    """Levels of nested arrays and objects, counted level by level without recursion
    (stops counting past MAX_JSON_DEPTH)."""
    levels, level = 0, [obj] if isinstance(obj, (list, dict)) else []
    while level and levels <= MAX_JSON_DEPTH:
        levels += 1
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (list, dict))]
    return levels


def loads(text: str, where: str) -> Any:
    """``text`` as JSON; ``where`` ("body", "line 3") goes into every error message."""
    too_deep = BadRequest(f"JSON in {where} is nested too deeply: at most {MAX_JSON_DEPTH} "
                          "levels of arrays and objects")
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys, parse_int=_integer)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON in {where}: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # from the hooks
        raise BadRequest(f"invalid JSON in {where}: {exc}") from None
    # More brackets than the limit is rare and cheap to rule out before walking the result.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and depth(obj) > MAX_JSON_DEPTH:
        raise too_deep
    return obj
