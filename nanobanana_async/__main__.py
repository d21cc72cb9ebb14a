"""``python -m nanobanana_async``: the ``nanobanana`` command line."""

from .cli import main

raise SystemExit(main())
