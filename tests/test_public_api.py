"""The public surface promised in API-CONTRACT.md."""

import re
import subprocess
import sys

import kiemashup

CONTRACT_NAMES = {
    "MashupRequest", "Model", "VocalGender", "MashupClient", "TaskHandle", "Stage",
    "TaskStatus", "TaskSnapshot", "Track", "CallbackReceiver", "parse_callback",
    "KieError", "RequestValidationError", "TransportError", "APIError",
    "AuthenticationError", "InsufficientCreditsError", "RateLimitError",
    "ServiceUnavailableError", "ServerError", "ProtocolError", "CallbackRejected",
    "SubmitOutcomeUnknown", "TaskFailedError",
}  # fmt: skip


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, names only real attributes, and covers the whole contract."""
    assert kiemashup.__all__ == sorted(kiemashup.__all__)
    assert all(hasattr(kiemashup, name) for name in kiemashup.__all__)
    assert set(kiemashup.__all__) >= CONTRACT_NAMES


def test_init_defines_nothing() -> None:
    """Everything in kiemashup/__init__.py is a re-export from a private module."""
    for name in kiemashup.__all__:
        obj = getattr(kiemashup, name)
        assert hasattr(obj, "__module__"), f"{name} is not a class or function"
        assert obj.__module__.startswith("kiemashup._"), (name, obj.__module__)


def test_import_does_not_load_testing_kit() -> None:
    """`import kiemashup` leaves kiemashup.testing (and aiohttp.web) unloaded."""
    code = "import sys, kiemashup; print('kiemashup.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _drawn_tree() -> dict[str, str]:
    """Each class drawn in the errors module's docstring, with the parent it is drawn under."""
    from kiemashup._core import errors

    assert errors.__doc__ is not None
    lines = errors.__doc__.split("```")[1].strip().splitlines()
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        match = re.match(r"^([│ ]*)(?:[├└]── )?(\w+)", line)
        assert match is not None, line
        depth, name = len(match.group(1)) + (4 if "── " in line else 0), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def test_error_tree() -> None:
    """Every public error is drawn in the errors docstring, under the class it subclasses."""
    drawn = _drawn_tree()
    public_errors = {
        name
        for name in kiemashup.__all__
        if isinstance(getattr(kiemashup, name), type)
        and issubclass(getattr(kiemashup, name), Exception)
    }
    assert public_errors == set(drawn) | {"KieError"}
    for name, parent in drawn.items():
        assert issubclass(getattr(kiemashup, name), getattr(kiemashup, parent)), (name, parent)
    assert issubclass(kiemashup.RequestValidationError, ValueError)


def test_stage_is_ordered_and_model_values_are_api_strings() -> None:
    """Stage compares in order and Model values equal Kie's strings."""
    S = kiemashup.Stage
    assert S.PENDING < S.TEXT < S.FIRST < S.COMPLETE
    assert [m.value for m in kiemashup.Model] == ["V4", "V4_5", "V4_5PLUS", "V4_5ALL", "V5", "V5_5"]
