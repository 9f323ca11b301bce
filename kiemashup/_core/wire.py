"""The one cattrs converter: JSON key names and leniency live here. This module performs no I/O.

Kie mixes casings: record-info replies are camelCase, callbacks are snake_case with
camelCase exceptions (``callbackType``, ``createTime``), and fields come and go. We
normalise every incoming key to snake_case, then structure with one converter that
ignores extra keys and treats absent, null and empty-string fields as missing.
Outgoing request bodies are camelCase with Kie's own spellings (``callBackUrl``).
"""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from kiemashup._core.errors import ProtocolError
from kiemashup._core.models import TaskSnapshot, Track

# Outgoing renames where Kie's spelling is not plain camelCase of our field name.
_OUTGOING_RENAMES = {"upload_urls": "uploadUrlList", "callback_url": "callBackUrl"}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")
_snake_cache: dict[str, str] = {}


def snake(key: str) -> str:
    """``audioUrl`` -> ``audio_url``; snake_case keys pass through unchanged."""
    cached = _snake_cache.get(key)
    if cached is None:
        cached = _CAMEL_BOUNDARY.sub(r"_\1", key).lower()
        if len(_snake_cache) < 4096:  # bounded: keys come from the network
            _snake_cache[key] = cached
    return cached


def camel(name: str) -> str:
    """``style_weight`` -> ``styleWeight``, with Kie's exceptions."""
    renamed = _OUTGOING_RENAMES.get(name)
    if renamed is not None:
        return renamed
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _lenient_str(value: Any, _type: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _lenient_float(value: Any, _type: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got bool")
    return float(value)


def make_converter() -> cattrs.Converter:
    """The converter for Kie payloads; built once at import."""
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(str | None, _lenient_str)
    conv.register_structure_hook(float | None, _lenient_float)
    conv.register_structure_hook(Track, make_dict_structure_fn(Track, conv))
    return conv


CONVERTER = make_converter()
_TRACK_FIELDS = frozenset(a.name for a in attrs.fields(Track))


# Performance (docs/performance.md, "CPU per poll"): reading tracks is most of what a
# typed poll costs over raw JSON. Tracks in record-info's usual shape (camelCase keys,
# string fields, a float duration) are built directly, with checks done in C; anything
# else takes the converter, which stays the one authority on leniency and errors.
_FIELD_NAMES = tuple(a.name for a in attrs.fields(Track))
_CAMEL_KEYS = tuple(camel(name) for name in _FIELD_NAMES)  # in field order
_USUAL_KEYS = frozenset(_CAMEL_KEYS)
_ABSENT = dict.fromkeys(_CAMEL_KEYS)
_in_field_order = operator.itemgetter(*_CAMEL_KEYS)
_NONE = type(None)


def _usual_track(raw: Mapping[Any, Any]) -> Track | None:
    """The track the converter would build, or None when ``raw`` is not in the usual shape.

    Usual: known camelCase keys, every value a string or null, except a float
    ``duration`` (an int may overflow, a numeric string needs the converter).
    """
    if not raw.keys() <= _USUAL_KEYS:
        return None
    values = _in_field_order({**_ABSENT, **raw})
    kinds = list(map(type, values))
    duration = kinds[-1]  # the last field (a test keeps it there)
    if duration is not float and duration is not _NONE:
        return None
    if kinds.count(str) + kinds.count(_NONE) + (duration is float) != len(kinds):
        return None
    if "" in values:  # "" means missing
        return Track(*[None if v == "" else v for v in values])
    return Track(*values)


def structure_track(raw: object) -> Track:
    """One track from a record-info ``sunoData`` item or a callback ``data.data`` item."""
    if not isinstance(raw, Mapping):
        raise ProtocolError(f"track entry is not an object: {type(raw).__name__}")
    return _usual_track(raw) or _converted_track(raw)


def _converted_track(raw: Mapping[Any, Any]) -> Track:
    """A track in any shape the converter accepts, else ``ProtocolError``."""
    normalised: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(key, str):
            name = snake(key)
            # Both spellings of one field: the last one with a value wins.
            if name in _TRACK_FIELDS and (name not in normalised or value not in (None, "")):
                normalised[name] = value
    try:
        return CONVERTER.structure(normalised, Track)
    except Exception as exc:  # cattrs errors never escape this module
        raise ProtocolError(f"track entry cannot be read: {exc}") from exc


def structure_tracks(raw: object) -> tuple[Track, ...]:
    """A list of tracks; null or missing means none."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError(f"track list is not a list: {type(raw).__name__}")
    # JSON objects are dicts: the usual track is built without a Mapping check (hot path).
    return tuple(
        [
            (_usual_track(item) if type(item) is dict else None) or structure_track(item)
            for item in raw
        ]
    )


_PLAIN = frozenset((str, bool, int, float))
_field_names: dict[type, tuple[tuple[str, str], ...]] = {}


def unstructure_request(request: attrs.AttrsInstance) -> dict[str, Any]:
    """The camelCase JSON body for an attrs request object; ``None`` fields are omitted."""
    cls = type(request)
    names = _field_names.get(cls)
    if names is None:  # (field, JSON key) pairs, computed once per class
        names = _field_names[cls] = tuple((f.name, camel(f.name)) for f in attrs.fields(cls))
    body: dict[str, Any] = {}
    for name, key in names:
        value = getattr(request, name)
        if value is None:
            continue
        kind = type(value)  # exact types first: this runs for every field of every submit
        if kind in _PLAIN:
            pass
        elif isinstance(value, enum.Enum):  # cattrs passes str enums through as enums
            value = value.value
        elif kind is tuple:
            value = [v if type(v) in _PLAIN else CONVERTER.unstructure(v) for v in value]
        else:
            value = CONVERTER.unstructure(value)
        body[key] = value
    return body


def snapshot_json(snapshot: TaskSnapshot) -> dict[str, Any]:
    """A JSON-ready view of a snapshot (status and stage as strings), for output and journals."""
    data = attrs.asdict(snapshot, recurse=True)
    data["status"] = str(snapshot.status)
    data["stage"] = snapshot.stage.name
    return data
