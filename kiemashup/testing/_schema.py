"""The mashup request schema as the fake server enforces it (KIE-API.md 1.1-1.3).

Written independently of the SDK's own validation, so that the two check each
other. This module performs no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["MODELS", "payload_problems"]

MODELS: tuple[str, ...] = ("V4", "V4_5", "V4_5PLUS", "V4_5ALL", "V5", "V5_5")

_KNOWN_KEYS = frozenset(
    {
        "uploadUrlList",
        "customMode",
        "model",
        "callBackUrl",
        "prompt",
        "style",
        "title",
        "instrumental",
        "vocalGender",
        "styleWeight",
        "weirdnessConstraint",
        "audioWeight",
    }
)
_WEIGHTS = ("styleWeight", "weirdnessConstraint", "audioWeight")
_CUSTOM_ONLY = ("style", "title", "vocalGender", *_WEIGHTS)
_NON_CUSTOM_PROMPT_MAX = 500
_TITLE_MAX = 80


def _is_http_url(value: object) -> bool:
    # "string (uri)": RFC 3986 allows no raw whitespace or control characters.
    if not isinstance(value, str) or any(c.isspace() or ord(c) < 32 for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _limits(model: object) -> tuple[int, int]:
    """(custom prompt limit, style limit) for ``model``; lenient for unknown models."""
    return (3000, 200) if model == "V4" else (5000, 1000)


def _check_text(
    payload: Mapping[str, object], key: str, *, required: bool, limit: int
) -> list[str]:
    if key not in payload:
        return [f"{key}: required"] if required else []
    value = payload[key]
    if not isinstance(value, str):
        return [f"{key}: must be a string, got {type(value).__name__}"]
    if required and not value.strip():
        return [f"{key}: must not be empty"]
    if len(value) > limit:
        return [f"{key}: at most {limit} characters, got {len(value)}"]
    return []


def _check_weight(key: str, value: object) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [f"{key}: must be a number, got {type(value).__name__}"]
    if not 0 <= value <= 1:
        return [f"{key}: must be between 0 and 1, got {value}"]
    if abs(value * 100 - round(value * 100)) > 1e-9:
        return [f"{key}: at most two decimals, got {value}"]
    return []


def _check_urls(payload: Mapping[str, object]) -> list[str]:
    urls = payload.get("uploadUrlList")
    if "uploadUrlList" not in payload:
        return ["uploadUrlList: required"]
    if not isinstance(urls, list):
        return [f"uploadUrlList: must be a list, got {type(urls).__name__}"]
    if len(urls) != 2:
        return [f"uploadUrlList: must hold exactly 2 URLs, got {len(urls)}"]
    return [
        f"uploadUrlList[{index}]: must be an http(s) URL, got {url!r}"
        for index, url in enumerate(urls)
        if not _is_http_url(url)
    ]


def _check_common(payload: Mapping[str, object]) -> list[str]:
    problems = [f"{key}: unknown field" for key in sorted(set(payload) - _KNOWN_KEYS)]
    problems.extend(_check_urls(payload))
    if "customMode" not in payload:
        problems.append("customMode: required")
    elif not isinstance(payload["customMode"], bool):
        problems.append(f"customMode: must be a boolean, got {payload['customMode']!r}")
    if "model" not in payload:
        problems.append("model: required")
    elif payload["model"] not in MODELS:
        problems.append(f"model: must be one of {', '.join(MODELS)}, got {payload['model']!r}")
    if "callBackUrl" not in payload:
        problems.append("callBackUrl: required")
    elif not _is_http_url(payload["callBackUrl"]):
        problems.append(f"callBackUrl: must be an http(s) URL, got {payload['callBackUrl']!r}")
    if "instrumental" in payload and not isinstance(payload["instrumental"], bool):
        problems.append(f"instrumental: must be a boolean, got {payload['instrumental']!r}")
    return problems


def _check_custom(payload: Mapping[str, object]) -> list[str]:
    prompt_max, style_max = _limits(payload.get("model"))
    problems = _check_text(payload, "style", required=True, limit=style_max)
    problems += _check_text(payload, "title", required=True, limit=_TITLE_MAX)
    instrumental = payload.get("instrumental") is True
    problems += _check_text(payload, "prompt", required=not instrumental, limit=prompt_max)
    if "vocalGender" in payload and payload["vocalGender"] not in ("m", "f"):
        problems.append(f"vocalGender: must be 'm' or 'f', got {payload['vocalGender']!r}")
    for key in _WEIGHTS:
        if key in payload:
            problems += _check_weight(key, payload[key])
    return problems


def _check_non_custom(payload: Mapping[str, object]) -> list[str]:
    problems = _check_text(payload, "prompt", required=True, limit=_NON_CUSTOM_PROMPT_MAX)
    # "In non-custom mode leave it empty" (KIE-API.md 1.1): an empty string or null is
    # what other clients send for style and title, and Kie accepts it.
    problems += [
        f"{key}: only allowed in custom mode"
        for key in _CUSTOM_ONLY
        if key in payload and payload[key] not in ("", None)
    ]
    return problems


def payload_problems(payload: object) -> list[str]:
    """Every way ``payload`` breaks the mashup request schema; empty when valid."""
    if not isinstance(payload, dict):
        return [f"body: must be a JSON object, got {type(payload).__name__}"]
    problems = _check_common(payload)
    custom = payload.get("customMode")
    if custom is True:
        problems += _check_custom(payload)
    elif custom is False:
        problems += _check_non_custom(payload)
    return problems
