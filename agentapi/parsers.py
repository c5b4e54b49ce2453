"""The API's JSON bodies: parsed once, refusing what PostgreSQL cannot store and what nests too deep.

JSON may carry `\\u0000` and unpaired surrogates (`\\ud800`); PostgreSQL's text and jsonb refuse
both, and a field that forgot to check would turn them into a 500 at the database. A body nested a
few hundred levels deep would exhaust Python's recursion limit in whatever walks it next (a
RecursionError, a 500). Both are refused here, once, for every key and value of every body, as a
400 (`malformed_request`); the walk is iterative, so it cannot overflow itself. Both planes parse
bodies with `loads` (DRF through StrictJSONParser; the data plane directly).
"""

import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def _storable_string(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate
        return False
    return True


def check(data) -> None:
    """Raise ParseError when the parsed body nests deeper than JSON_MAX_DEPTH or holds a string
    PostgreSQL cannot store."""
    limit = settings.JSON_MAX_DEPTH
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not _storable_string(value):
                raise ParseError("Strings may not contain NUL characters or unpaired surrogates.")
        elif isinstance(value, (dict, list)):
            if depth > limit:
                raise ParseError(f"The body is nested more than {limit} levels deep.")
            if isinstance(value, dict):
                for key, item in value.items():
                    if not _storable_string(key):
                        raise ParseError("Strings may not contain NUL characters or unpaired surrogates.")
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def loads(body: bytes):
    """Parse and check a JSON body. Raises ParseError (a 400) for anything malformed."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise ParseError(f"The body is nested more than {settings.JSON_MAX_DEPTH} levels deep.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"JSON parse error - {exc}") from None
    check(data)
    return data


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"The body is nested more than {settings.JSON_MAX_DEPTH} levels deep.") from None
        check(data)
        return data
