"""``python -m bgcoor_core.cli``: the ``bgcoor`` command without the console script."""

from . import main

main()
