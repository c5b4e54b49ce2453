"""The API's JSON parser: DRF's, refusing strings PostgreSQL cannot store.

JSON may carry `\\u0000` and unpaired surrogates (`\\ud800`); PostgreSQL's text and jsonb refuse
both, and a field that forgot to check would turn them into a 500 at the database. They are
refused here, once, for every key and value of every body, as a 400 (`malformed_request`).
"""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def _storable(value) -> bool:
    if isinstance(value, str):
        if "\x00" in value:
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # an unpaired surrogate
            return False
        return True
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    return True


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        if not _storable(data):
            raise ParseError("Strings may not contain NUL characters or unpaired surrogates.")
        return data
