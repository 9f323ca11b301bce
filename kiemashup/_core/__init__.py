"""The pure core of kiemashup. Every module in this package performs no I/O.

No aiohttp, no asyncio, no clock, no environment, no randomness: time, secrets and
jitter are arguments. An import-linter contract keeps it so (pyproject.toml).

- ``errors``     the exception tree
- ``models``     stages, statuses, tracks, snapshots
- ``policy``     tunable policies (polling, retries, rate limits, timeouts)
- ``request``    ``MashupRequest`` and its validation
- ``state``      the stage table: the one place snapshots are built and advanced
- ``wire``       the cattrs converter: JSON key names and leniency
- ``protocol``   endpoint paths, the envelope, submit/record-info/credits/upload replies
- ``callbacks``  callback bodies and their signatures
- ``timing``     backoff, poll intervals, sliding windows
- ``filenames``  audio sniffing and safe file names
"""
