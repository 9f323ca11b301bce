"""``python -m kiemashup``: the same as the ``kiemashup`` command."""

import sys

from kiemashup._cli import main

sys.exit(main())
