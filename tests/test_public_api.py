"""The public surface promised in API-CONTRACT.md."""

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
        module = getattr(getattr(kiemashup, name), "__module__", "kiemashup._x")
        assert module.startswith("kiemashup._"), name


def test_import_does_not_load_testing_kit() -> None:
    """`import kiemashup` leaves kiemashup.testing (and aiohttp.web) unloaded."""
    code = "import sys, kiemashup; print('kiemashup.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_error_tree() -> None:
    """The error classes form the contract's tree."""
    k = kiemashup
    assert issubclass(k.RequestValidationError, k.KieError)
    assert issubclass(k.RequestValidationError, ValueError)
    for cls in (
        k.AuthenticationError,
        k.InsufficientCreditsError,
        k.RateLimitError,
        k.ServiceUnavailableError,
        k.ServerError,
    ):
        assert issubclass(cls, k.APIError)
    for cls in (
        k.TransportError,
        k.APIError,
        k.ProtocolError,
        k.CallbackRejected,
        k.SubmitOutcomeUnknown,
        k.TaskFailedError,
    ):
        assert issubclass(cls, k.KieError)


def test_stage_is_ordered_and_model_values_are_api_strings() -> None:
    """Stage compares in order and Model values equal Kie's strings."""
    S = kiemashup.Stage
    assert S.PENDING < S.TEXT < S.FIRST < S.COMPLETE
    assert [m.value for m in kiemashup.Model] == ["V4", "V4_5", "V4_5PLUS", "V4_5ALL", "V5", "V5_5"]
