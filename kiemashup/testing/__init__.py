"""Testing kit: a fake Kie API server on loopback, for your own tests and demos.

```python
from kiemashup.testing import FakeKieServer, Timeline, Fault

async with FakeKieServer() as server:
    server.script(Timeline.failure(at=0.05))
    server.inject(Fault("record-info", "http_503"))
    ...  # point the client at server.url
```

Also: ``FakeKieServer(shape="least-friendly")`` for the least convenient replies Kie's
docs allow; ``python -m kiemashup.testing serve`` to run it as a process; and pytest
fixtures in ``kiemashup.testing.pytest_plugin`` (docs/testing.md).
"""

from kiemashup.testing._callbacks import CallbackDelivery, CallbackFaults, signed_headers
from kiemashup.testing._fake import FakeKieServer
from kiemashup.testing._faults import Fault
from kiemashup.testing._schema import payload_problems
from kiemashup.testing._task import FakeTask, FakeTrack, RecordedRequest, callback_payload
from kiemashup.testing._timeline import Timeline

__all__ = [
    "CallbackDelivery",
    "CallbackFaults",
    "FakeKieServer",
    "FakeTask",
    "FakeTrack",
    "Fault",
    "RecordedRequest",
    "Timeline",
    "callback_payload",
    "payload_problems",
    "signed_headers",
]
