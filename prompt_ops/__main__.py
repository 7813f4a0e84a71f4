"""``python -m prompt_ops ...`` is the ``prompt-ops`` command."""

import sys

from prompt_ops.cli import main

sys.exit(main())
