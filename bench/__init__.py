"""`make bench` (`python -m bench`): latency and throughput of the mesh against raw baselines.

    bench/registry.py    named scenarios (what one call is) and targets (ratios to a baseline)
    bench/scenarios/     scenario modules by section (core: hub paths vs raw gRPC G; edge; executor; scale)
    bench/env.py         the processes a run needs, started once and shared between scenarios
    bench/measure.py     the load loop: warmup, N calls at concurrency c, p50/p99, throughput, CPU/call
    bench/run.py         one variant (one set of gRPC settings) in one client process -> JSON
    bench/report.py      Markdown table with ratios, targets met or missed
    bench/__main__.py    runs each variant in its own process and writes bench/results/

Servers run in their own processes; the client is the run process (uvloop, like the hub).
"""
