"""bg-coor's W2 waiting through ``handle.result()`` (issue 16), beside ``bgcoor``:

    BENCH_ADAPTERS=benchmarks/peers BENCH_PYTHON_BGCOOR=.venv/bin/python \\
      BENCH_PYTHON_BGCOORRESULT=.venv/bin/python \\
      bash ../shared/bench/run_peers.sh --libs bgcoor,bgcoorresult --workloads w2 --skip-physical

The same tasks and worker as ``bgcoor_bench``; each W2 ping is enqueued and then awaited
with ``await handle.result()`` before the harness's ``BLPOP`` (which then returns at once),
so its round trip is enqueue-then-result: what a caller waiting for an outcome pays, to
compare with plain W2 measured in the same run.
"""

import bgcoor_bench
from common import adapter_main


class ResultAdapter(bgcoor_bench.BgcoorAdapter):
    name = "bgcoorresult"

    async def enqueue_ping(self, token):
        handle = await bgcoor_bench.ping.enqueue(token)
        await handle.result(timeout=30)


ADAPTER = ResultAdapter()

if __name__ == "__main__":
    adapter_main("bgcoorresult_bench")
