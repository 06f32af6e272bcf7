"""Hypothesis strategies for hostile webhook bodies: JSON-ish text built from the pieces where
Python's json and PostgreSQL's jsonb disagree, in several byte encodings."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EDGE_NUMBERS = [
    "NaN", "Infinity", "-Infinity", "-0", "0.0", "1e131071", "1e131072", "-1e131071",
    "9.99e131071", "1e-16383", "1.5e-16383", "1e-16384", "0e99999999", "0e-99999", "0e1000000",
    "1E+5", "1e400", "1e-400", "123456789012345678901234567890", "01", "1.", ".5", "+1", "0x10",
]  # fmt: skip
EDGE_STRINGS = [
    '"\\ud800"', '"\\udc00"', '"\\ud800\\udc00"', '"\\ud83d\\ude00"', '"\\udbff\\udfff"',
    '"\\u0000"', '"\\\\u0000"', '"a\\u0000b"', '"\\uD800x"', '"\\ufeff"', '"\\u001f"', '"\t"',
    '"\x7f"', '"\\x41"', '"\\/"', '"\u2028"', '"\\ud800\\ud800"', '"\\uDFFF"',
]  # fmt: skip
WHITESPACE = st.sampled_from(["", " ", "\n", "\r\n", "\t", "\x0b", "\x0c", "\u00a0", "\ufeff"])


def _numbers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(EDGE_NUMBERS),
        st.integers().map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda f: json.dumps(f)),
        st.builds(
            lambda mantissa, exponent: f"{mantissa}e{exponent}",
            st.integers(-(10**6), 10**6),
            st.integers(-200_000, 200_000),
        ),
    )


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(EDGE_STRINGS),
        st.text(max_size=20).map(json.dumps),  # ASCII escapes, lone surrogates as \udxxx
        st.text(max_size=20).map(lambda t: json.dumps(t, ensure_ascii=False)),  # raw characters
    )


def json_texts() -> st.SearchStrategy[str]:
    scalars = st.one_of(_numbers(), _strings(), st.sampled_from(["true", "false", "null"]))

    def containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.lists(children, max_size=5).map(lambda items: "[" + ",".join(items) + "]"),
            st.lists(st.tuples(_strings(), WHITESPACE, children), max_size=5).map(
                lambda pairs: "{" + ",".join(f"{k}{w}:{v}" for k, w, v in pairs) + "}"
            ),
        )

    nested = st.builds(
        lambda depth, inner: "[" * depth + inner + "]" * depth,
        st.sampled_from([0, 1, 511, 512, 513, 2000, 60000]),
        scalars,
    )
    document = st.one_of(st.recursive(scalars, containers, max_leaves=12), nested)
    return st.builds(lambda a, doc, b: a + doc + b, WHITESPACE, document, WHITESPACE)


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-8-sig":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    if encoding == "utf-8":
        return text.encode("utf-8", "surrogatepass")  # lone surrogates as (invalid) bytes
    return text.encode(encoding, "surrogatepass")


def bodies() -> st.SearchStrategy[bytes]:
    encodings = st.sampled_from(["utf-8"] * 8 + ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
    return st.one_of(
        st.builds(_encode, json_texts(), encodings),
        st.binary(max_size=64),
    )


def property_settings(examples_variable: str, default: int) -> settings:
    """Hypothesis against a live cluster: no deadline, a fixed seed in CI (a red run is
    repeatable), the example count overridable by `examples_variable`."""
    return settings(
        max_examples=int(os.environ.get(examples_variable, str(default))),
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
