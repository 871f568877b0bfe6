"""``python -m cprfl_zoo.cli``: the ``cprfl-zoo`` command."""

import sys

from . import main

sys.exit(main())
