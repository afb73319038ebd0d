"""``python -m improve_dsl.cli``: the same as the ``improve`` console script."""

import sys

from .app import main

sys.exit(main())
