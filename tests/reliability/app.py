"""The worker application of the reliability scenarios, configured by the environment:

    python -m bgcoor_core.cli worker reliability.app:manager

``BGCOOR_*`` settings as usual; ``REL_LEDGER_DIR`` (ledger files), ``REL_SIDE_EFFECTS``
(the side-effect database of ``rel.charge``) and ``REL_FAULT_DIR`` (the fault plugin's
once-per-task markers). The fault plugin serves ``faulty+<scheme>://`` URLs and does
nothing for plain ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from bgcoor_core import TaskManager

from .faults import FaultPlugin
from .tasks import declare

manager = TaskManager(plugins=[FaultPlugin(Path(os.environ["REL_FAULT_DIR"]))])
tasks = declare(manager)
