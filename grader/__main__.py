"""Entry point: `python -m grader grade SUBMISSIONS --out OUT [--workers N] [--db-url URL]`."""

from grader.cli import main

raise SystemExit(main())
