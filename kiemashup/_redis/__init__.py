"""The Redis backend's parts (``kiemashup.redis`` is its public face); only they import redis."""
