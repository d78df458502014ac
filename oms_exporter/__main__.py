"""`python -m oms_exporter`: the same entry point as the `oms-exporter` console script."""

from oms_exporter.cli import main

raise SystemExit(main())
