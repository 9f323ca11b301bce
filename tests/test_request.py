"""MashupRequest enforces every rule of KIE-API.md §1.1-1.3 and emits Kie's exact JSON body."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiemashup import KieError, MashupRequest, Model, RequestValidationError, VocalGender
from kiemashup.testing import payload_problems

A = "https://example.com/a.mp3"
B = "http://example.com/b.wav"
URLS = (A, B)
CB = "https://cb.example/x"


def custom(**kwargs: Any) -> MashupRequest:
    """A custom-mode request with valid defaults that ``kwargs`` override."""
    options: dict[str, Any] = {
        "custom_mode": True,
        "style": "Jazz",
        "title": "Relaxing Piano",
        "prompt": "[Verse] la la",
    }
    options.update(kwargs)
    return MashupRequest(URLS, **options)


def problems_of(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """The problems MashupRequest(*args, **kwargs) reports (fails if it constructs)."""
    with pytest.raises(RequestValidationError) as info:
        MashupRequest(*args, **kwargs)
    return info.value.problems


def fields_of(*args: Any, **kwargs: Any) -> list[str]:
    """The fields named by the problems of MashupRequest(*args, **kwargs)."""
    return [p.field for p in problems_of(*args, **kwargs)]


# --- upload URLs ----------------------------------------------------------------------


def test_two_http_urls_accepted_as_any_sequence() -> None:
    """Any sequence of two http(s) URLs is accepted and stored as a tuple."""
    assert MashupRequest([A, B], prompt="p").upload_urls == URLS
    assert MashupRequest(URLS, prompt="p").upload_urls == URLS


def test_bare_string_is_rejected_not_split_into_characters() -> None:
    """A lone URL string is one problem on upload_urls, not 24 one-character URLs."""
    (problem,) = problems_of(A, prompt="p")
    assert problem.field == "upload_urls"
    assert "exactly 2" in problem.rule


@pytest.mark.parametrize("urls", [[A], [A, B, A], []])
def test_wrong_url_count_is_rejected(urls: list[str]) -> None:
    """One, three or zero URLs break the exactly-two rule and say how many were given."""
    (problem,) = problems_of(urls, prompt="p")
    assert problem.field == "upload_urls"
    assert problem.actual == f"{len(urls)} URL(s)"


@pytest.mark.parametrize(
    "bad",
    ["ftp://example.com/a.mp3", "example.com/a.mp3", "", "http://", "https://ex ample.com/a"],
)
def test_non_http_url_is_rejected_with_its_index(bad: str) -> None:
    """Each URL must be http(s) with a host; the problem names its index."""
    assert fields_of([A, bad], prompt="p") == ["upload_urls[1]"]


def test_unparseable_url_is_a_validation_problem_not_a_crash() -> None:
    """A URL urllib cannot split (broken IPv6 host) is reported, not raised as a bare ValueError."""
    assert fields_of(["http://[::1", B], prompt="p") == ["upload_urls[0]"]


# --- non-custom mode ------------------------------------------------------------------


def test_non_custom_minimal_request_is_valid() -> None:
    """Non-custom mode needs only the two URLs and a prompt; model defaults to V5."""
    req = MashupRequest(URLS, prompt="two songs, one groove")
    assert req.custom_mode is False
    assert req.model is Model.V5


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_non_custom_requires_a_prompt(prompt: str | None) -> None:
    """Non-custom mode always needs a non-blank prompt, even when instrumental."""
    assert fields_of(URLS, prompt=prompt) == ["prompt"]
    assert fields_of(URLS, prompt=prompt, instrumental=True) == ["prompt"]


def test_non_custom_prompt_limit_is_500_for_every_model() -> None:
    """Non-custom prompts may have 500 characters and not 501, whatever the model."""
    for model in Model:
        MashupRequest(URLS, prompt="x" * 500, model=model)
        (problem,) = problems_of(URLS, prompt="x" * 501, model=model)
        assert (problem.field, problem.actual) == ("prompt", "501 characters")
        assert "500" in problem.rule


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("style", "Jazz"),
        ("title", "T"),
        ("vocal_gender", "m"),
        ("style_weight", 0.5),
        ("weirdness_constraint", 0.5),
        ("audio_weight", 0.5),
    ],
)
def test_custom_only_fields_rejected_in_non_custom_mode(field: str, value: object) -> None:
    """style, title, vocal_gender and the weights say they only apply in custom mode."""
    (problem,) = problems_of(URLS, prompt="p", **{field: value})
    assert problem.field == field
    assert "only applies in custom mode" in problem.rule


# --- custom mode ----------------------------------------------------------------------


def test_custom_mode_with_lyrics_is_valid() -> None:
    """Custom mode with style, title and prompt (the lyrics) is valid."""
    req = custom()
    assert (req.style, req.title, req.prompt) == ("Jazz", "Relaxing Piano", "[Verse] la la")


def test_custom_mode_requires_style_and_title() -> None:
    """Custom mode without style and title reports both."""
    assert fields_of(URLS, custom_mode=True, prompt="lyrics") == ["style", "title"]


def test_custom_mode_blank_style_and_title_count_as_missing() -> None:
    """Whitespace-only style and title are as good as missing in custom mode."""
    assert fields_of(URLS, custom_mode=True, prompt="l", style=" ", title="") == ["style", "title"]


def test_custom_prompt_required_unless_instrumental() -> None:
    """Custom mode needs a prompt (the lyrics) unless instrumental=True."""
    assert fields_of(URLS, custom_mode=True, style="s", title="t") == ["prompt"]
    req = MashupRequest(URLS, custom_mode=True, style="s", title="t", instrumental=True)
    assert req.prompt is None


@pytest.mark.parametrize(
    ("model", "limit"),
    [(Model.V4, 3000), *((m, 5000) for m in Model if m is not Model.V4)],
)
def test_custom_prompt_limit_depends_on_model(model: Model, limit: int) -> None:
    """Custom prompts may have 3000 characters on V4 and 5000 on the other models."""
    custom(model=model, prompt="x" * limit)
    (problem,) = problems_of(
        URLS, custom_mode=True, style="s", title="t", model=model, prompt="x" * (limit + 1)
    )
    assert (problem.field, problem.actual) == ("prompt", f"{limit + 1} characters")
    assert str(limit) in problem.rule
    assert model.value in problem.rule


@pytest.mark.parametrize(
    ("model", "limit"),
    [(Model.V4, 200), *((m, 1000) for m in Model if m is not Model.V4)],
)
def test_style_limit_depends_on_model(model: Model, limit: int) -> None:
    """Styles may have 200 characters on V4 and 1000 on the other models."""
    custom(model=model, style="s" * limit)
    (problem,) = problems_of(
        URLS, custom_mode=True, prompt="p", title="t", model=model, style="s" * (limit + 1)
    )
    assert (problem.field, problem.actual) == ("style", f"{limit + 1} characters")
    assert str(limit) in problem.rule


@pytest.mark.parametrize("model", list(Model))
def test_title_limit_is_80_for_every_model(model: Model) -> None:
    """Titles may have 80 characters and not 81 on every model (kie's mashup page)."""
    custom(model=model, title="t" * 80)
    (problem,) = problems_of(
        URLS, custom_mode=True, prompt="p", style="s", model=model, title="t" * 81
    )
    assert (problem.field, problem.actual) == ("title", "81 characters")


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, 0.5, 0.61, 0.99, 0.01, 0.29, 0.57])
def test_weights_accept_zero_to_one_with_two_decimals(value: float) -> None:
    """Weights from 0 to 1 with at most two decimals are valid, despite binary float error."""
    req = custom(style_weight=value, weirdness_constraint=value, audio_weight=value)
    assert req.to_payload()["styleWeight"] == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (-0.01, "between 0 and 1"),
        (1.01, "between 0 and 1"),
        (float("nan"), "between 0 and 1"),
        (float("inf"), "between 0 and 1"),
        (0.615, "at most two decimals"),
        (0.001, "at most two decimals"),
        ("0.5", "a number from 0 to 1"),
        (True, "a number from 0 to 1"),
    ],
)
def test_weights_reject_out_of_range_too_precise_or_non_numbers(value: object, rule: str) -> None:
    """Each weight must be a number from 0 to 1 with at most two decimals."""
    for field in ("style_weight", "weirdness_constraint", "audio_weight"):
        (problem,) = problems_of(
            URLS, custom_mode=True, prompt="p", style="s", title="t", **{field: value}
        )
        assert (problem.field, problem.rule) == (field, rule)


def test_weight_with_nine_decimals_is_rejected() -> None:
    """A weight with nine decimals breaks the two-decimals rule (multipleOf 0.01)."""
    with pytest.raises(RequestValidationError):
        custom(style_weight=0.500000001)


def test_url_with_space_is_rejected_by_the_schema() -> None:
    """The fake server's schema rejects an upload URL with a space, as the SDK does."""
    payload = MashupRequest(URLS, prompt="p").with_callback_url(CB).to_payload()
    payload["uploadUrlList"] = [A, "https://ex ample.com/b.mp3"]
    assert payload_problems(payload)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("m", VocalGender.MALE), ("f", VocalGender.FEMALE), (VocalGender.MALE, VocalGender.MALE)],
)
def test_vocal_gender_accepts_enum_or_letter(given: object, expected: VocalGender) -> None:
    """vocal_gender takes VocalGender or its letter and is stored as the enum."""
    assert custom(vocal_gender=given).vocal_gender is expected


@pytest.mark.parametrize("bad", ["M", "male", "x", 1])
def test_vocal_gender_rejects_anything_else(bad: object) -> None:
    """vocal_gender is 'm' or 'f' (case-sensitive), nothing else."""
    (problem,) = problems_of(
        URLS, custom_mode=True, prompt="p", style="s", title="t", vocal_gender=bad
    )
    assert problem.field == "vocal_gender"
    assert problem.actual == repr(bad)


# --- model and types ------------------------------------------------------------------


@pytest.mark.parametrize("model", list(Model))
def test_model_given_as_string_becomes_the_enum(model: Model) -> None:
    """model accepts the API string and stores the Model member."""
    assert MashupRequest(URLS, prompt="p", model=model.value).model is model


@pytest.mark.parametrize("bad", ["V3_5", "v5", "V6", ""])
def test_unknown_model_is_rejected_listing_the_allowed_ones(bad: str) -> None:
    """A model outside the mashup enum is rejected, and the rule lists every allowed model."""
    (problem,) = problems_of(URLS, prompt="p", model=bad)
    assert problem.field == "model"
    assert all(m.value in problem.rule for m in Model)


def test_model_values_equal_the_api_strings() -> None:
    """Model's values are exactly the six strings of the mashup enum."""
    assert [m.value for m in Model] == ["V4", "V4_5", "V4_5PLUS", "V4_5ALL", "V5", "V5_5"]


def test_non_bool_flags_and_non_string_texts_are_rejected() -> None:
    """custom_mode and instrumental must be bools; prompt, style and title strings."""
    assert fields_of(URLS, prompt="p", instrumental="no") == ["instrumental"]
    assert fields_of(URLS, prompt=5) == ["prompt", "prompt"]  # not a string, so also missing
    assert fields_of(URLS, prompt="p", custom_mode=1) == ["custom_mode"]


def test_callback_url_must_be_http() -> None:
    """An explicit callback_url must be an http(s) URL."""
    assert fields_of(URLS, prompt="p", callback_url="ftp://cb") == ["callback_url"]


# --- reporting ------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    """All broken rules are listed together, each with its field, limit and actual value."""
    problems = problems_of(
        ["ftp://a"],
        custom_mode=True,
        model="V4",
        style="s" * 201,
        title="t" * 81,
        prompt="p" * 3001,
        vocal_gender="x",
        style_weight=2,
        weirdness_constraint=0.123,
        audio_weight="loud",
    )
    assert [p.field for p in problems] == [
        "upload_urls",
        "upload_urls[0]",
        "prompt",
        "style",
        "title",
        "vocal_gender",
        "style_weight",
        "weirdness_constraint",
        "audio_weight",
    ]
    by_field = {p.field: p for p in problems}
    assert "3000" in by_field["prompt"].rule
    assert by_field["prompt"].actual == "3001 characters"
    assert "200" in by_field["style"].rule
    assert by_field["style_weight"].actual == "2"


def test_error_message_names_every_problem() -> None:
    """The error message counts the problems and contains each of them."""
    with pytest.raises(RequestValidationError) as info:
        MashupRequest([A], prompt="x" * 501)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert all(str(p) in message for p in info.value.problems)
    assert "501 characters" in message


def test_validation_error_is_value_error_and_kie_error() -> None:
    """RequestValidationError can be caught as ValueError or as KieError."""
    with pytest.raises(ValueError):  # noqa: PT011 - the subclass relation is the point
        MashupRequest([A], prompt="p")
    with pytest.raises(KieError):
        MashupRequest([A], prompt="p")


def test_long_values_are_described_by_length() -> None:
    """A long rejected string is described by its length, not echoed in full."""
    (problem,) = problems_of(URLS, prompt="p", style="s" * 300)
    assert problem.actual == "300 characters"


# --- immutability and payload ---------------------------------------------------------


def test_request_is_frozen_and_hashable() -> None:
    """Requests cannot be changed after construction and equal requests hash equally."""
    req = MashupRequest(URLS, prompt="p")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        req.prompt = "q"  # type: ignore[misc]
    assert hash(req) == hash(MashupRequest(list(URLS), prompt="p"))
    assert {req, MashupRequest(URLS, prompt="p")} == {req}


def test_with_callback_url_returns_a_validated_copy() -> None:
    """with_callback_url copies the request with a new callBackUrl and revalidates it."""
    req = MashupRequest(URLS, prompt="p")
    copy = req.with_callback_url(CB)
    assert (copy.callback_url, req.callback_url) == (CB, None)
    with pytest.raises(RequestValidationError):
        req.with_callback_url("not a url")


def test_payload_of_full_custom_request_has_exact_camel_case_keys() -> None:
    """to_payload gives exactly Kie's camelCase body, enums as their API strings."""
    req = MashupRequest(
        URLS,
        custom_mode=True,
        model="V4",
        prompt="...",
        style="Jazz",
        title="Relaxing Piano",
        instrumental=True,
        vocal_gender="m",
        style_weight=0.61,
        weirdness_constraint=0.72,
        audio_weight=0.65,
        callback_url="https://example.com/callback",
    )
    assert req.to_payload() == {
        "uploadUrlList": [A, B],
        "customMode": True,
        "model": "V4",
        "callBackUrl": "https://example.com/callback",
        "prompt": "...",
        "style": "Jazz",
        "title": "Relaxing Piano",
        "instrumental": True,
        "vocalGender": "m",
        "styleWeight": 0.61,
        "weirdnessConstraint": 0.72,
        "audioWeight": 0.65,
    }
    assert type(req.to_payload()["model"]) is str
    assert type(req.to_payload()["vocalGender"]) is str


def test_payload_omits_unset_fields_but_always_sends_mode_model_and_instrumental() -> None:
    """Unset optional fields are omitted; customMode, model and instrumental are always sent."""
    assert MashupRequest(URLS, prompt="p").to_payload() == {
        "uploadUrlList": [A, B],
        "customMode": False,
        "model": "V5",
        "prompt": "p",
        "instrumental": False,
    }


def test_payload_of_valid_request_passes_the_fake_servers_schema() -> None:
    """A valid request with a callback URL is accepted by the independent schema checker."""
    assert payload_problems(custom(vocal_gender="f").with_callback_url(CB).to_payload()) == []


# --- property: the SDK and the independent schema agree ---------------------------------

_CAMEL = {
    "upload_urls": "uploadUrlList",
    "prompt": "prompt",
    "custom_mode": "customMode",
    "model": "model",
    "style": "style",
    "title": "title",
    "instrumental": "instrumental",
    "vocal_gender": "vocalGender",
    "style_weight": "styleWeight",
    "weirdness_constraint": "weirdnessConstraint",
    "audio_weight": "audioWeight",
}


def _sized(*sizes: int) -> st.SearchStrategy[str]:
    return st.sampled_from(sizes).map(lambda n: "x" * n)


_url = st.sampled_from(
    [
        A,
        B,
        "HTTPS://EXAMPLE.COM/C.MP3",
        "ftp://x.com/a",
        "",
        "x.com/a",
        "http://",
        "https://x y.com/a",
    ]
)
_text = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["", "  ", "\n"]))
_weight = st.one_of(
    st.none(),
    st.integers(-5, 105).map(lambda n: n / 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, True, "0.5", 0.615]),
)
#: For each field, a mix of valid values, edge values at the limits and invalid ones.
_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "upload_urls": st.one_of(st.lists(_url, max_size=3), _url, st.tuples(_url, _url)),
    "custom_mode": st.one_of(st.booleans(), st.sampled_from([0, 1, None])),
    "instrumental": st.one_of(st.booleans(), st.just("no")),
    "prompt": st.one_of(_text, _sized(499, 500, 501, 2999, 3000, 3001, 4999, 5000, 5001)),
    "model": st.sampled_from([*Model, "V4", "V5_5", "V3_5", "v5"]),
    "style": st.one_of(_text, _sized(199, 200, 201, 999, 1000, 1001)),
    "title": st.one_of(_text, _sized(79, 80, 81)),
    "vocal_gender": st.one_of(st.none(), st.sampled_from(["m", "f", "M", "x", *VocalGender])),
    "style_weight": _weight,
    "weirdness_constraint": _weight,
    "audio_weight": _weight,
}


@st.composite
def request_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request's kwargs for either mode, with up to four fields replaced at random."""
    kwargs: dict[str, Any] = {"upload_urls": [A, B], "instrumental": draw(st.booleans())}
    if draw(st.booleans()):
        kwargs.update(custom_mode=True, style="Jazz", title="Piano", prompt="[Verse] la")
    else:
        kwargs.update(custom_mode=False, prompt="two songs, one groove")
    fields = draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=4, unique=True))
    for name in fields:
        kwargs[name] = draw(_FIELD_VALUES[name])
    return kwargs


def _hand_payload(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The camelCase body built by hand from raw kwargs, without MashupRequest."""
    body: dict[str, Any] = {"callBackUrl": CB, "customMode": False, "model": "V5"}
    for name, value in kwargs.items():
        if value is None and name not in ("upload_urls", "custom_mode", "instrumental"):
            continue  # an unset optional field is omitted; a required one is sent as null
        if name == "upload_urls" and isinstance(value, list | tuple):
            value = list(value)
        body[_CAMEL[name]] = value
    return body


@settings(max_examples=300, deadline=None)
@given(request_kwargs())
def test_sdk_validation_agrees_with_the_independent_schema(kwargs: dict[str, Any]) -> None:
    """A request that constructs yields a schema-valid payload; one that fails, an invalid one."""
    args = dict(kwargs)
    urls = args.pop("upload_urls")
    problems: tuple[Any, ...] = ()
    try:
        req = MashupRequest(urls, **args)
    except RequestValidationError as exc:
        problems = exc.problems
    if problems:
        assert payload_problems(_hand_payload(kwargs)), problems
    else:
        payload = req.with_callback_url(CB).to_payload()
        assert payload_problems(payload) == []
        assert payload == _hand_payload(kwargs)
