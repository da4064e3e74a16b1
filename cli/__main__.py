"""`python -m cli` runs the same program as the `trainyard` script."""

from __future__ import annotations

from cli.main import main

main()
