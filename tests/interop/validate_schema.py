#!/usr/bin/env python3
"""Validates posting-event bodies against schemas/posting-event.v1.json with Python `jsonschema`.

Used by tests/schema.rs, so the schema is checked by a validator that is not ours. Usage:

    python3 tests/interop/validate_schema.py SCHEMA < bodies.json

stdin: a JSON array of event bodies, each a string (the raw bytes a publisher would send).
stdout: a JSON array, one verdict per body: {"json": bool, "valid": bool, "error": str|null}.
Exits 2 if the schema itself is not a valid draft 2020-12 schema.
"""

import json
import sys

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        print(f"schema is not valid draft 2020-12: {e.message}", file=sys.stderr)
        return 2
    validator = Draft202012Validator(schema)
    verdicts = []
    for body in json.load(sys.stdin):
        try:
            # Strict like the worker: NaN/Infinity are not JSON.
            event = json.loads(body, parse_constant=_reject_constant)
        except ValueError as e:
            verdicts.append({"json": False, "valid": False, "error": str(e)})
            continue
        error = next(iter(sorted(validator.iter_errors(event), key=str)), None)
        verdicts.append(
            {
                "json": True,
                "valid": error is None,
                "error": None if error is None else f"{list(error.path)}: {error.message}",
            }
        )
    json.dump(verdicts, sys.stdout)
    return 0


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


if __name__ == "__main__":
    sys.exit(main())
