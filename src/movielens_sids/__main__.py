"""``python -m movielens_sids``: the console script (see ``cli``). May import: cli."""

import sys

from .cli import main

sys.exit(main())
