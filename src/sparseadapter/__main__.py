"""``python -m sparseadapter``: the same as the ``sparseadapter`` command."""

from sparseadapter.cli import main

raise SystemExit(main())
