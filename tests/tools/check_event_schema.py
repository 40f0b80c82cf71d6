"""Judges events against docs/schema/event.schema.json for tests/event_schema.rs.

Reads one base64-encoded event (its raw bytes) a line on stdin and prints one
verdict a line: "valid", "invalid_json", "not_ijson <why>" or
"invalid <path>: <message>". I-JSON (RFC 7493) is a rule of the document, not
of its parsed value, so it is checked while parsing, as a producer's parser
would; the schema then judges the value (Draft 2020-12, python-jsonschema).

`pattern` is evaluated with ECMA-262 semantics, as JSON Schema specifies:
a final `$` is the end of the string (Python's `$` also matches before a
final newline).
"""

import base64
import json
import math
import re
import sys

import jsonschema
from jsonschema import validators


class NotIJson(Exception):
    pass


def no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise NotIJson("duplicate key " + json.dumps(key))
        seen[key] = value
    return seen


def finite_float(text):
    value = float(text)
    if math.isinf(value):
        raise NotIJson("number out of range " + text[:20])
    return value


def finite_int(text):
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise NotIJson("number out of range")
    return value


def refuse_constant(name):
    # NaN, Infinity: not JSON at all.
    raise ValueError(name)


def lone_surrogates(value):
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(lone_surrogates(v) for v in value)
    if isinstance(value, dict):
        return any(lone_surrogates(k) or lone_surrogates(v) for k, v in value.items())
    return False


def ecma_pattern(validator, pattern, instance, schema):
    if not validator.is_type(instance, "string"):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if not re.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    base = validators.validator_for(schema)
    base.check_schema(schema)
    Validator = validators.extend(base, {"pattern": ecma_pattern})
    validator = Validator(schema)
    for line in sys.stdin:
        raw = base64.b64decode(line.strip())
        try:
            text = raw.decode("utf-8")
            value = json.loads(
                text,
                object_pairs_hook=no_duplicates,
                parse_float=finite_float,
                parse_int=finite_int,
                parse_constant=refuse_constant,
            )
            if lone_surrogates(value):
                raise NotIJson("lone surrogate")
        except NotIJson as e:
            print("not_ijson", e, flush=True)
            continue
        except ValueError:
            print("invalid_json", flush=True)
            continue
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            path = ".".join(str(p) for p in first.absolute_path) or "event"
            print("invalid", f"{path}: {first.message}"[:300].replace("\n", " "), flush=True)
        else:
            print("valid", flush=True)


if __name__ == "__main__":
    main()
