"""A request checked against botocore's service model before it is sent: every problem AWS would answer with a
ValidationException after the upload, found first, one line each.

botocore's own ParamValidator checks types, required members and minimums, but neither maximums nor enums nor
patterns; this walks the operation's input shape and checks all of them. Patterns are matched whole, with the
`regex` package, which knows the Unicode classes (`\\p{L}`) the SageMaker model uses. Placeholders the launcher
shows where only AWS can answer (`<ACCOUNT_ID>`) are checked as a real value of the same form (`123456789012`).

One module for every operation, so the deploy, transform and tuning requests of later work reuse it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import regex

ACCOUNT_PLACEHOLDER = "<ACCOUNT_ID>"
STAMP_PLACEHOLDER = "<yyyymmddHHMMSS>"
PLACEHOLDER_VALUES = {ACCOUNT_PLACEHOLDER: "123456789012", STAMP_PLACEHOLDER: "20260101000000"}

TAG_CHARACTERS = r"\p{L}\p{Z}\p{N}_.:/=+\-@"
"""What SageMaker's Tag Key and Value patterns allow."""


@functools.cache
def _service(name: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(name)


@functools.cache
def _compiled(pattern: str) -> regex.Pattern:
    # `.` also matches a line break: the service does not document how it treats multi-line values (prompt
    # templates hold them), and refusing a request AWS would take blocks a launch with no way around it.
    return regex.compile(pattern, regex.DOTALL)


def tag_safe(text: str) -> str:
    """`text` with every character a tag may not hold replaced by `-`."""
    return regex.sub(rf"[^{TAG_CHARACTERS}]", "-", text)


def with_placeholders_filled(params: Any, placeholders: dict[str, str] | None = None) -> Any:
    """`params` with each placeholder replaced by a valid value of its form."""
    text = json.dumps(params)
    for placeholder, value in (placeholders or PLACEHOLDER_VALUES).items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def problems(
    service: str, operation: str, params: dict[str, Any], placeholders: dict[str, str] | None = None
) -> list[str]:
    """One line per value of `params` that the service model of `service`'s `operation` refuses."""
    shape = _service(service).operation_model(operation).input_shape
    found: list[str] = []
    _check(shape, with_placeholders_filled(params, placeholders), "", found)
    return [f"{operation} {line}" for line in found]


def problems_with_fixes(
    service: str,
    operation: str,
    params: dict[str, Any],
    fixes: dict[str, str],
    placeholders: dict[str, str] | None = None,
) -> list[str]:
    """`problems`, each line ending with what to fix for its top-level field (`fixes`, by field name) where known."""
    found = problems(service, operation, params, placeholders)
    named = [fixes.get(regex.split(r"[ .:\[]", line.split(" ", 1)[1], maxsplit=1)[0]) for line in found]
    return [f"{line}; {fix}" if fix else line for line, fix in zip(found, named, strict=True)]


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-12:]} ({len(value)} characters)"


def _check(shape, value: Any, path: str, found: list[str]) -> None:
    kind = shape.type_name
    expected = {
        "structure": dict,
        "map": dict,
        "list": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "long": int,
        "float": (int, float),
        "double": (int, float),
    }.get(kind)
    if expected and (not isinstance(value, expected) or (kind != "boolean" and isinstance(value, bool))):
        found.append(f"{path or 'request'}: {_show(value)} is not of type {kind}")
        return
    meta = shape.metadata
    if kind == "structure":
        at = f"{path}." if path else ""
        for name in shape.required_members:
            if name not in value:
                found.append(f"{at}{name}: required, missing")
        for name, member in value.items():
            if name not in shape.members:
                found.append(f"{at}{name}: {shape.name} has no such field")
            else:
                _check(shape.members[name], member, f"{at}{name}", found)
    elif kind == "list":
        _check_size(meta, len(value), path, "items", found)
        for i, item in enumerate(value):
            _check(shape.member, item, f"{path}[{i}]", found)
    elif kind == "map":
        _check_size(meta, len(value), path, "entries", found)
        for key, item in value.items():
            _check(shape.key, key, f"{path} key {_show(key)}", found)
            _check(shape.value, item, f"{path}[{_show(key)}]", found)
    elif kind == "string":
        if shape.enum and value not in shape.enum:
            found.append(f"{path}: {_show(value)} is not one of {', '.join(shape.enum)}")
        _check_size(meta, len(value), path, "characters", found)
        pattern = meta.get("pattern")
        if pattern and not _compiled(pattern).fullmatch(value):
            found.append(f"{path}: {_show(value)} {_pattern_problem(pattern, value)}")
    elif kind in ("integer", "long", "float", "double"):
        if "min" in meta and value < meta["min"]:
            found.append(f"{path}: {value} is below the minimum {meta['min']}")
        if "max" in meta and value > meta["max"]:
            found.append(f"{path}: {value} is above the maximum {meta['max']}")


def _check_size(meta: dict[str, Any], size: int, path: str, unit: str, found: list[str]) -> None:
    if "min" in meta and size < meta["min"]:
        found.append(f"{path}: {size} {unit}, at least {meta['min']} needed")
    if "max" in meta and size > meta["max"]:
        found.append(f"{path}: {size} {unit}, at most {meta['max']} allowed")


def _pattern_problem(pattern: str, value: str) -> str:
    """For a pattern that is a set of characters (`[...]*`), name the characters it refuses."""
    compiled = _compiled(pattern)
    if compiled.fullmatch(""):
        refused = sorted({c for c in value if not compiled.fullmatch(c)})
        if refused and compiled.fullmatch("".join(c for c in value if c not in refused)):
            return f"holds {' '.join(repr(c) for c in refused)}, which {pattern} does not allow"
    return f"does not match {pattern}"
