"""Reading a file of one JSON value per line (steering suites, concept-search examples), with
errors that name the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

_JSON_NAMES = {dict: "object", str: "string", list: "array"}


def read_json_lines(path: str | Path, expect: type, error: type[Exception] = ValueError
                    ) -> Iterator[tuple[int, str, Any]]:
    """(line number, "path:line", value) for each non-blank line, whose value must be of type
    `expect` (dict, str or list); anything else raises `error` naming the file and line."""
    what = _JSON_NAMES[expect]
    for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise error(f"{where}: not valid JSON ({err.msg}); write one JSON {what} per line") from None
        if not isinstance(value, expect):
            raise error(f"{where}: expected a JSON {what}, got {type(value).__name__}")
        yield n, where, value
