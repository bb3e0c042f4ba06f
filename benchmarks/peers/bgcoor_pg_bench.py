"""bg-coor on PostgreSQL for the peer benchmark harness: the bgcoor adapter, run as
``bgcoor_pg`` so one harness run measures bg-coor on both servers beside every peer:

    BENCH_ADAPTERS=benchmarks/peers BENCH_PYTHON_BGCOOR=.venv/bin/python \\
      BENCH_PYTHON_BGCOOR_PG=.venv/bin/python bash ../shared/bench/run_peers.sh

The URL is ``BENCH_BGCOOR_PG_URL``, by default schema ``bgcoor_bench`` in the harness's
PostgreSQL database; the worker process inherits it as ``BENCH_BGCOOR_URL``.
"""

import os
import sys

from common import PG_DSN, adapter_main

os.environ["BENCH_BGCOOR_URL"] = os.environ.get(
    "BENCH_BGCOOR_PG_URL", f"{PG_DSN}?schema=bgcoor_bench"
)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bgcoor_bench import ADAPTER

ADAPTER.name = "bgcoor_pg"

if __name__ == "__main__":
    adapter_main("bgcoor_pg_bench")
