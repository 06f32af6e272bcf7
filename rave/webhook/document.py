"""The door's rule for bodies: accept only JSON that PostgreSQL's jsonb stores as it is.

Python's `json.loads` accepts more than jsonb does. Each limit below is PostgreSQL 15's own,
found by sending the edge values to a real server (tests/unit/test_webhook_document.py proves the
rule against one with hypothesis):
- the body is strict UTF-8 (no BOM, no UTF-16/32, which json.loads would guess from bytes);
- no NaN, Infinity or -Infinity (not JSON; jsonb refuses them);
- numbers fit `numeric`: below 10**131072 (NUMERIC_WEIGHT_MAX) and at most 16383 digits after
  the point (NUMERIC_DSCALE_MAX) -- "1e131072" and "1.5e-16383" are refused by PostgreSQL;
- strings and keys hold no U+0000 (jsonb: "unsupported Unicode escape sequence") and no lone
  surrogate escape ("\\ud800" alone: "invalid input syntax for type json");
- nesting is bounded (PostgreSQL hits max_stack_depth, Python its recursion limit; we stop at
  MAX_DEPTH, far beyond any real provider's payload).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation

MAX_DEPTH = 512
NUMERIC_MAX_ADJUSTED_EXPONENT = 131071  # 10**131072 overflows numeric
NUMERIC_MAX_SCALE = 16383  # digits after the decimal point
ZERO_MAX_EXPONENT = 1_000_000  # "0e1073741823" overflows; far smaller bounds suffice
# escapes that can decode to U+0000 or to a surrogate; only then are strings walked one by one
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")


class Unstorable(ValueError):
    """A body jsonb cannot store as sent; the message is the short reason a sender sees."""


def _number(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:  # json's scanner only hands over JSON numbers; defensive
        raise Unstorable("number is not a JSON number") from None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: NaN/Infinity never reach here
    if -exponent > NUMERIC_MAX_SCALE:
        raise Unstorable(f"number has more than {NUMERIC_MAX_SCALE} digits after the point")
    if value.is_zero():
        if exponent > ZERO_MAX_EXPONENT:
            raise Unstorable("number exponent out of range")
    elif value.adjusted() > NUMERIC_MAX_ADJUSTED_EXPONENT:
        raise Unstorable("number out of PostgreSQL's numeric range")
    return value


def _constant(name: str) -> object:
    raise Unstorable(f"{name} is not JSON")


class _Pairs(list[tuple[str, object]]):
    """An object with every pair kept: a duplicate key's earlier value is checked too (jsonb
    parses it before keeping the last one; a dict would have dropped it unseen)."""


def _walk(document: object, check_strings: bool) -> None:
    """Depth and string checks without recursion (an attacker picks the depth)."""
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, _Pairs)):
            if depth > MAX_DEPTH:
                raise Unstorable(f"nested deeper than {MAX_DEPTH}")
            for key, value in node.items() if isinstance(node, dict) else node:
                if check_strings and _UNSTORABLE_CHAR.search(key):
                    raise Unstorable("string with U+0000 or a lone surrogate")
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise Unstorable(f"nested deeper than {MAX_DEPTH}")
            stack.extend((value, depth + 1) for value in node)
        elif check_strings and isinstance(node, str) and _UNSTORABLE_CHAR.search(node):
            raise Unstorable("string with U+0000 or a lone surrogate")


def parse(body: bytes) -> object:
    """The parsed document (numbers as Decimal), or Unstorable with a short reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unstorable("body is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise Unstorable("body starts with a byte order mark")
    try:
        document = json.loads(
            text, parse_float=_number, parse_int=_number, parse_constant=_constant
        )
    except Unstorable:
        raise
    except RecursionError:
        raise Unstorable(f"nested deeper than {MAX_DEPTH}") from None
    except ValueError:
        raise Unstorable("body is not valid JSON") from None
    # brackets inside strings only over-count, so few brackets prove a shallow document
    shallow = text.count("[") + text.count("{") <= MAX_DEPTH
    suspect = _SUSPECT_ESCAPE.search(text) is not None
    if suspect:  # parsed again keeping every pair, so no duplicate key hides a string
        _walk(
            json.loads(text, parse_float=_number, parse_int=_number, object_pairs_hook=_Pairs),
            check_strings=True,
        )
    elif not shallow:
        _walk(document, check_strings=False)
    return document
