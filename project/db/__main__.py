"""``python -m project.db ...``: see the package's docstring."""

import sys

from project.db import main

sys.exit(main(sys.argv[1:]))
