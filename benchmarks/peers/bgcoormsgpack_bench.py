"""bg-coor with msgpack messages (issue 15), for the peer harness beside ``bgcoor``:

    BENCH_ADAPTERS=benchmarks/peers BENCH_PYTHON_BGCOOR=.venv/bin/python \\
      BENCH_PYTHON_BGCOORMSGPACK=.venv/bin/python \\
      bash ../shared/bench/run_peers.sh --libs bgcoor,bgcoormsgpack --workloads w1 --skip-physical

The same tasks and worker as ``bgcoor_bench``, with ``BGCOOR_SERIALIZER=msgpack`` set for
the producer and inherited by the worker process (the bgcoor-msgpack plugin installed).
"""

import os

os.environ["BGCOOR_SERIALIZER"] = "msgpack"

import bgcoor_bench  # reads the setting at import
from common import adapter_main


class MsgpackAdapter(bgcoor_bench.BgcoorAdapter):
    name = "bgcoormsgpack"


ADAPTER = MsgpackAdapter()

if __name__ == "__main__":
    adapter_main("bgcoormsgpack_bench")
