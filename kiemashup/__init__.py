"""kiemashup: an asyncio SDK for the Kie.ai Suno mashup API.

Everything public is re-exported here; ``kiemashup.testing`` is imported on its own.
"""

from kiemashup._batch import BatchItem
from kiemashup._client import MashupClient
from kiemashup._core.errors import (
    APIError,
    AuthenticationError,
    BackendError,
    CallbackRejected,
    ClientClosedError,
    DownloadError,
    FileValidationError,
    InsufficientCreditsError,
    JournalError,
    JournalMismatchError,
    KieError,
    Problem,
    ProtocolError,
    RateLimitError,
    RequestValidationError,
    ServerError,
    ServiceUnavailableError,
    SubmitOutcomeUnknown,
    TaskFailedError,
    TransportError,
    UploadError,
)
from kiemashup._core.models import Model, Stage, TaskSnapshot, TaskStatus, Track, VocalGender
from kiemashup._core.policy import PollPolicy, RateLimits, RetryPolicy, Timeouts
from kiemashup._core.request import MashupRequest
from kiemashup._handle import TaskHandle
from kiemashup._receiver import CallbackReceiver, parse_callback

__all__ = [
    "APIError",
    "AuthenticationError",
    "BackendError",
    "BatchItem",
    "CallbackReceiver",
    "CallbackRejected",
    "ClientClosedError",
    "DownloadError",
    "FileValidationError",
    "InsufficientCreditsError",
    "JournalError",
    "JournalMismatchError",
    "KieError",
    "MashupClient",
    "MashupRequest",
    "Model",
    "PollPolicy",
    "Problem",
    "ProtocolError",
    "RateLimitError",
    "RateLimits",
    "RequestValidationError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "Stage",
    "SubmitOutcomeUnknown",
    "TaskFailedError",
    "TaskHandle",
    "TaskSnapshot",
    "TaskStatus",
    "Timeouts",
    "Track",
    "TransportError",
    "UploadError",
    "VocalGender",
    "parse_callback",
]
