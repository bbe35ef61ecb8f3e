"""``python -m server`` is the ``sessiond`` command."""

from __future__ import annotations

import sys

from server.cli.main import main

sys.exit(main())
