"""The CLI's parser under generated bad values: one clear line and the documented code.

Hypothesis builds values that are out of range, non-numeric, NaN, infinite, huge,
blank or oddly spelled; each run of ``main`` must return exit 2 (or 4 for the
environment) with a ``kiemashup:`` line on stderr, no traceback, and return well
within its time limit (a value that made the CLI wait forever would fail here).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import math
import os
from collections.abc import Callable
from unittest import mock

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kiemashup._cli import EXIT_CONFIG, EXIT_USAGE, main

URL = "https://cdn.example/a.mp3"
#: Longest a rejected value may take to be answered (it is answered at parse time).
NO_HANG_SECONDS = 20.0

numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"{f:e}"),
)
spellings = st.sampled_from(
    ["nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400",
     "", " ", "0", "-0", "0.0", "-1", "1_000", "0x10", "1,5", "\u0661", "\u00bd", "--", "-",
     "1e", "e1"]
)  # fmt: skip
texts = st.text(min_size=0, max_size=12)
values = st.one_of(numbers, spellings, texts, st.tuples(numbers, texts).map("".join))


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _between(low: float, high: float, *, low_included: bool) -> Callable[[str], bool]:
    def ok(text: str) -> bool:
        value = _float(text)
        if value is None or not math.isfinite(value):
            return False
        return (low <= value if low_included else low < value) and value <= high

    return ok


#: (argv before the value, flag, is the value accepted?) for every numeric option.
OPTIONS: list[tuple[tuple[str, ...], str, Callable[[str], bool]]] = [
    (("demo",), "--count", lambda t: (v := _int(t)) is not None and 1 <= v <= 200),
    (("demo",), "--time-scale", _between(0.05, 100, low_included=True)),
    (("wait", "t1"), "--timeout", _between(0, 7 * 24 * 3600, low_included=False)),
    (("submit", URL, URL, "--timeout", "5"), "--style-weight", lambda _text: False),  # no --custom
    (("submit", URL, URL, "--custom"), "--weirdness", lambda _text: False),  # no style, no title
    (("submit", URL, URL, "--custom"), "--audio-weight", lambda _text: False),
    (("batch", "no-such-file.jsonl"), "--concurrency", lambda _text: False),  # file is missing
]


def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """``main(argv)`` with ``env``, in a worker thread bounded by NO_HANG_SECONDS."""
    out, err = io.StringIO(), io.StringIO()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KIE_", "KIEMASHUP_"))}
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with (
            mock.patch.dict(os.environ, {**clean, **env}, clear=True),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = pool.submit(main, argv).result(timeout=NO_HANG_SECONDS)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return code, out.getvalue(), err.getvalue()


def check_answer(code: int, err: str, expected: int) -> None:
    """One clear ``kiemashup:`` line first, the expected code, no traceback."""
    assert code == expected, err
    assert err.startswith("kiemashup: "), err
    assert "Traceback" not in err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(OPTIONS), value=values, as_equals=st.booleans())
def test_bad_option_values_get_one_line_and_exit_2(
    option: tuple[tuple[str, ...], str, Callable[[str], bool]], value: str, as_equals: bool
) -> None:
    """Any rejected value of a numeric option exits 2 with one clear line, never hanging."""
    before, flag, accepted = option
    assume(not accepted(value))
    argv = [*before, f"{flag}={value}"] if as_equals else [*before, flag, value]
    code, _, err = run(argv, {"KIE_API_KEY": "k", "KIE_BASE_URL": "http://127.0.0.1:9"})
    check_answer(code, err, EXIT_USAGE)


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(["KIEMASHUP_POLL_INITIAL", "KIE_BASE_URL", "KIE_UPLOAD_BASE_URL"]),
    value=values,
)
def test_bad_environment_values_exit_4_before_any_request(name: str, value: str) -> None:
    """A rejected environment value exits 4 with one clear line, before any request."""
    assume("\x00" not in value and value.strip())  # the OS refuses NUL; blank means unset
    if name == "KIEMASHUP_POLL_INITIAL":
        assume(not _between(0, 3600, low_included=False)(value))
    else:
        assume("://" not in value)  # anything without a scheme is not a URL
    code, _, err = run(["status", "t1"], {"KIE_API_KEY": "k", name: value})
    check_answer(code, err, EXIT_CONFIG)
    assert name in err
