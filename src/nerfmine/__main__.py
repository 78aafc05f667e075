"""``python -m nerfmine``: the ``nerfmine`` command."""

import sys

from nerfmine.cli import main

sys.exit(main())
