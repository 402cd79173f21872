"""``python -m layerflow.training --stage N [--config FILE]``."""

from .cli import main

raise SystemExit(main())
