"""``MashupRequest`` and every rule of KIE-API.md §1.1-1.3. This module performs no I/O.

All rules are checked at construction and every broken one is reported at once in
``RequestValidationError.problems``: a user fixing a request should see the whole
list, not one problem per attempt.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from kiemashup._core.errors import Problem, RequestValidationError
from kiemashup._core.models import Model, VocalGender
from kiemashup._core.wire import unstructure_request

NON_CUSTOM_PROMPT_MAX = 500
TITLE_MAX = 80  # Kie's mashup page says 80 for all models; clones say 100 (KIE-API.md §1.3)


def custom_prompt_max(model: Model) -> int:
    return 3000 if model is Model.V4 else 5000


def style_max(model: Model) -> int:
    return 200 if model is Model.V4 else 1000


_CUSTOM_ONLY = (
    "style",
    "title",
    "vocal_gender",
    "style_weight",
    "weirdness_constraint",
    "audio_weight",
)
_WEIGHTS = ("style_weight", "weirdness_constraint", "audio_weight")


def _to_urls(value: Any) -> Any:
    # A lone string is a common mistake; keep it as is so the rules can name it.
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return value
    return tuple(value)


def _to_model(value: Any) -> Any:
    try:
        return Model(value)
    except ValueError:
        return value  # reported by the rules below


def _to_vocal_gender(value: Any) -> Any:
    if value is None:
        return None
    try:
        return VocalGender(value)
    except ValueError:
        return value  # reported by the rules below


def _describe(value: object) -> str:
    if isinstance(value, str) and len(value) > 40:
        return f"{len(value)} characters"
    return repr(value)


def is_http_url(value: object) -> bool:
    if not isinstance(value, str) or any(c.isspace() or ord(c) < 32 for c in value):
        return False  # a URI has no raw whitespace or control characters (RFC 3986)
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. "http://[::1": a broken URL is a problem to report, not a crash
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _two_decimals(value: float) -> bool:
    scaled = value * 100
    return math.isfinite(scaled) and abs(scaled - round(scaled)) < 1e-9


def _length_problem(field: str, value: object, limit: int, where: str) -> Problem | None:
    if isinstance(value, str) and len(value) > limit:
        return Problem(field, f"at most {limit} characters {where}", f"{len(value)} characters")
    return None


def surrogate_problems(req: MashupRequest) -> list[Problem]:
    """Text fields holding a lone surrogate (``"\\ud800"``): not Unicode, cannot be sent."""
    problems = []
    fields = [(name, getattr(req, name)) for name in ("prompt", "style", "title", "callback_url")]
    if isinstance(req.upload_urls, tuple):
        fields += [(f"upload_urls[{i}]", url) for i, url in enumerate(req.upload_urls)]
    for name, value in fields:
        if isinstance(value, str):
            at = next((i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff"), None)
            if at is not None:
                rule = "valid Unicode text (no lone surrogate)"
                problems.append(Problem(name, rule, f"U+{ord(value[at]):04X} at position {at}"))
    return problems


def request_problems(req: MashupRequest) -> list[Problem]:
    """Every rule ``req`` breaks, in field order; empty when the request is valid."""
    problems = list(_common_problems(req))
    model = req.model if isinstance(req.model, Model) else Model.V5  # limits need some model
    if req.custom_mode is True:
        problems.extend(_custom_problems(req, model))
    elif req.custom_mode is False:
        problems.extend(_non_custom_problems(req))
    if req.callback_url is not None and not is_http_url(req.callback_url):
        problems.append(Problem("callback_url", "an http(s) URL", _describe(req.callback_url)))
    problems += surrogate_problems(req)
    return problems


def _common_problems(req: MashupRequest) -> Iterator[Problem]:
    """The rules of every request: two URLs, a known model, fields of the right types."""
    urls = req.upload_urls
    if not isinstance(urls, tuple):
        yield Problem("upload_urls", "a sequence of exactly 2 http(s) URLs", _describe(urls))
    else:
        if len(urls) != 2:
            yield Problem("upload_urls", "exactly 2 URLs", f"{len(urls)} URL(s)")
        for i, url in enumerate(urls):
            if not is_http_url(url):
                yield Problem(f"upload_urls[{i}]", "an http(s) URL", _describe(url))
    if not isinstance(req.model, Model):
        allowed = ", ".join(m.value for m in Model)
        yield Problem("model", f"one of {allowed}", _describe(req.model))
    for name in ("custom_mode", "instrumental"):
        if not isinstance(getattr(req, name), bool):
            yield Problem(name, "a bool", _describe(getattr(req, name)))
    for name in ("prompt", "style", "title"):
        value = getattr(req, name)
        if value is not None and not isinstance(value, str):
            yield Problem(name, "a string", _describe(value))


def _filled(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _custom_problems(req: MashupRequest, model: Model) -> Iterator[Problem]:
    """Custom mode (KIE-API.md §1.2): style and title required, lyrics unless instrumental."""
    for name in ("style", "title"):
        value = getattr(req, name)
        if not _filled(value):
            yield Problem(name, "required in custom mode", _describe(value))
    if req.instrumental is not True and not _filled(req.prompt):
        yield Problem(
            "prompt",
            "required in custom mode unless instrumental (the lyrics)",
            _describe(req.prompt),
        )
    for p in (
        _length_problem("prompt", req.prompt, custom_prompt_max(model), f"for {model.value}"),
        _length_problem("style", req.style, style_max(model), f"for {model.value}"),
        _length_problem("title", req.title, TITLE_MAX, "(all models)"),
    ):
        if p is not None:
            yield p
    if req.vocal_gender is not None and not isinstance(req.vocal_gender, VocalGender):
        yield Problem("vocal_gender", "'m' or 'f'", _describe(req.vocal_gender))
    for name in _WEIGHTS:
        yield from _weight_problems(name, getattr(req, name))


def _weight_problems(name: str, value: object) -> Iterator[Problem]:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        yield Problem(name, "a number from 0 to 1", _describe(value))
    elif not 0 <= value <= 1:
        yield Problem(name, "between 0 and 1", repr(value))
    elif not _two_decimals(float(value)):
        yield Problem(name, "at most two decimals", repr(value))


def _non_custom_problems(req: MashupRequest) -> Iterator[Problem]:
    """Non-custom mode: a description prompt only; the custom-mode fields stay unset."""
    if not _filled(req.prompt):
        yield Problem(
            "prompt", "required in non-custom mode (a description)", _describe(req.prompt)
        )
    p = _length_problem("prompt", req.prompt, NON_CUSTOM_PROMPT_MAX, "in non-custom mode")
    if p is not None:
        yield p
    for name in _CUSTOM_ONLY:
        value = getattr(req, name)
        # KIE-API.md §1.2 says to leave these empty in non-custom mode: "" is empty too,
        # and what other clients send.
        if value is not None and value != "":
            yield Problem(name, "only applies in custom mode (custom_mode=True)", _describe(value))


@attrs.frozen(slots=True)
class MashupRequest:
    """Two audio URLs plus options for ``POST /api/v1/generate/mashup``; validated when built."""

    upload_urls: tuple[str, str] = attrs.field(converter=_to_urls)
    prompt: str | None = attrs.field(default=None, kw_only=True)
    custom_mode: bool = attrs.field(default=False, kw_only=True)
    model: Model = attrs.field(default=Model.V5, kw_only=True, converter=_to_model)
    style: str | None = attrs.field(default=None, kw_only=True)
    title: str | None = attrs.field(default=None, kw_only=True)
    instrumental: bool = attrs.field(default=False, kw_only=True)
    vocal_gender: VocalGender | None = attrs.field(
        default=None, kw_only=True, converter=_to_vocal_gender
    )
    style_weight: float | None = attrs.field(default=None, kw_only=True)
    weirdness_constraint: float | None = attrs.field(default=None, kw_only=True)
    audio_weight: float | None = attrs.field(default=None, kw_only=True)
    callback_url: str | None = attrs.field(default=None, kw_only=True, repr=False)

    def __attrs_post_init__(self) -> None:
        problems = request_problems(self)
        if problems:
            raise RequestValidationError(problems)

    def with_callback_url(self, url: str) -> MashupRequest:
        """A copy that sends ``url`` as ``callBackUrl``."""
        return attrs.evolve(self, callback_url=url)

    def to_payload(self) -> dict[str, Any]:
        """The exact camelCase JSON body Kie expects; unset fields are omitted."""
        return unstructure_request(self)
