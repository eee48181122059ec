"""``python -m gateway``: see gateway.cli.main."""

from gateway.cli.main import main

raise SystemExit(main())
