"""``python -m nerfmine.cli``: the ``nerfmine`` command."""

import sys

from nerfmine.cli import main

sys.exit(main())
