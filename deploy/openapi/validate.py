#!/usr/bin/env python3
"""Validates an OpenAPI 3.x document, such as query-svc's /openapi.json, with openapi-spec-validator.

The document is read from DOCUMENT (a file, or - for standard input) as JSON. It must declare an
OpenAPI 3.x version (`openapi: 3.0.x`, `3.1.x` ...); it is then checked against that version's
specification, references included, and every problem found is printed with where it is. The exit
status is 0 for a valid document, 1 for an invalid one, 2 when the validator is not installed or
the document cannot be read.

Usage:
    python deploy/openapi/validate.py DOCUMENT

openapi-spec-validator comes from the virtualenv made by deploy/dev-deps.sh (run this with that
virtualenv's python); query-svc/tests/api/openapi.rs does so with the document the service serves.
"""

import argparse
import json
import sys
from pathlib import Path


class Failure(Exception):
    """A problem worth one clear line, and the exit status it means."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def import_validator():
    try:
        import openapi_spec_validator.shortcuts as shortcuts
        from jsonschema_path import SchemaPath
        from referencing.exceptions import Unresolvable
    except ImportError as error:
        raise Failure(
            f"{error.name} is not installed for {sys.executable}; run deploy/dev-deps.sh and use "
            "the python of the virtualenv it prints",
            2,
        ) from None
    return shortcuts, SchemaPath, Unresolvable


def read(source):
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as error:
        raise Failure(f"cannot read {source}: {error}", 2) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise Failure(f"{source} is not JSON: {error}", 1) from None


def problems(validator_api, document):
    """Every problem of the document, as lines, and the version it was checked against."""
    shortcuts, SchemaPath, Unresolvable = validator_api
    if not isinstance(document, dict):
        return ["(top level): not an object"], None
    version = document.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        return [f"openapi: {version!r} is not an OpenAPI 3.x version"], version
    try:
        cls = shortcuts.get_validator_cls(document)
    except Exception as error:  # the validator's own word on an unknown version
        return [f"openapi: {version!r}: {error}"], version
    validator = cls(SchemaPath.from_dict(document))
    lines = []
    try:
        for error in validator.iter_errors():
            where = " > ".join(str(part) for part in getattr(error, "path", ())) or "(top level)"
            lines.append(f"{where}: {getattr(error, 'message', error)}")
    except Unresolvable as error:
        # The validator stops at the first reference it cannot follow.
        lines.append(f"a reference that resolves to nothing: {getattr(error, 'ref', error)}")
    return lines, version


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("document", help="the OpenAPI document as JSON, or - for stdin")
    args = parser.parse_args(argv)
    try:
        validator_api = import_validator()
        document = read(args.document)
        found, version = problems(validator_api, document)
        if found:
            raise Failure(
                f"{args.document}: {len(found)} problem(s):\n  " + "\n  ".join(found), 1
            )
    except Failure as failure:
        print(f"validate: FAILED: {failure}", file=sys.stderr)
        return failure.status
    paths = document.get("paths") or {}
    operations = sum(
        1
        for item in paths.values()
        for method in item
        if method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    )
    print(
        f"validate: {args.document}: valid OpenAPI {version}: {len(paths)} paths, "
        f"{operations} operations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
