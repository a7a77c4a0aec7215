"""``python -m kubetune.trainer``: the trainer's command line (also installed as ``kubetune``)."""

from kubetune.trainer.cli import main

raise SystemExit(main())
