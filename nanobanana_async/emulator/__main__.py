"""``python -m nanobanana_async.emulator``."""

from .cli import main

raise SystemExit(main())
