"""``python -m kiemashup.testing serve``: the fake Kie API as a standalone process.

For trying the ``kiemashup`` command (or a client in another language) offline:
it prints the base URL and the environment to use, then serves until Ctrl-C or
SIGTERM. Uploads are served on the same URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from kiemashup.testing._fake import FakeKieServer
from kiemashup.testing._task import SHAPES
from kiemashup.testing._timeline import Timeline

__all__ = ["main", "serve"]

#: A key to print when any key is accepted (``--api-key`` not given).
ANY_KEY = "fake-key"
#: Seconds to text, first and complete at ``--time-scale 1``: slow enough to watch.
_STAGE_SECONDS = (2.0, 5.0, 8.0)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {value}")
    return value


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 1000):
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1000, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m kiemashup.testing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = sub.add_parser("serve", help="run FakeKieServer until Ctrl-C")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve_cmd.add_argument("--port", type=_port, default=0, help="default: a free port")
    serve_cmd.add_argument(
        "--time-scale",
        type=_scale,
        default=1.0,
        metavar="X",
        help="multiply the task timeline (text 2 s, first 5 s, complete 8 s) by X",
    )
    serve_cmd.add_argument("--api-key", help="accept only this key (default: any non-blank key)")
    serve_cmd.add_argument("--shape", choices=SHAPES, default="friendly", help="reply shape")
    serve_cmd.add_argument("--webhook-hmac-key", help="sign callbacks with this key")
    return parser


async def serve(args: argparse.Namespace) -> None:
    """Run the fake server described by ``args`` until cancelled or SIGTERM."""
    text, first, complete = (seconds * args.time_scale for seconds in _STAGE_SECONDS)
    server = FakeKieServer(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        default_timeline=Timeline.success(text=text, first=first, complete=complete),
        webhook_hmac_key=args.webhook_hmac_key,
        shape=args.shape,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        key = args.api_key or ANY_KEY
        print(f"FakeKieServer on {server.url} (Ctrl-C to stop)")
        print(f"export KIE_BASE_URL={server.url}")
        print(f"export KIE_UPLOAD_BASE_URL={server.url}")
        print(f"export KIE_API_KEY={key}")
        if args.api_key is None:
            print("# any non-blank key is accepted")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m kiemashup.testing``."""
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, the host cannot be bound
        print(f"python -m kiemashup.testing: {exc}", file=sys.stderr)
        return 1
    print("stopped", file=sys.stderr)
    return 0
