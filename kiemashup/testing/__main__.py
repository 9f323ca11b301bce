"""``python -m kiemashup.testing serve``: the fake Kie API as a standalone process."""

import sys

from kiemashup.testing._serve import main

sys.exit(main())
