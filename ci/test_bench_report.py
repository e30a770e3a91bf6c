"""Tests of the benchmark report's ceiling (ci/bench_report.py): the most a request could
do against its same-SQL limit were our own processes free. ci/bench runs them before it
measures anything."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_report  # noqa: E402


def results(cpu_ms, limit_rps, cores=2):
    """A system run at one concurrency whose commands cost `cpu_ms` by process."""
    figures = {"concurrency": 4, "rps": 300.0, "cpu_ms": cpu_ms}
    return {"machine": {"cores": cores},
            "system": {"idle_rss_mb": {"gateway": 20, "orders": 22, "orders-2": 22, "billing": 25, "billing-2": 25},
                       "load": {"command": [figures], "limit_command": [{"concurrency": 4, "rps": limit_rps}]}}}


def test_the_ceiling_counts_only_the_processes_that_are_not_ours():
    cpu = {"gateway": 0.7, "orders": 0.8, "billing": 0.2, "tansu": 1.5, "redis": 0.1, "postgres": 0.4}
    [(c, outside, most, ceiling)] = bench_report.ceilings_of(results(cpu, limit_rps=2000), "command")
    assert c == 4
    assert abs(outside - 2.0) < 1e-9  # tansu, redis and postgres; no replica counted as outside
    assert abs(most - 1000) < 1e-6  # 2 cores at 2 ms a command
    assert abs(ceiling - 0.5) < 1e-9


def test_the_ceiling_grows_with_the_cores_and_falls_with_the_limit():
    cpu = {"gateway": 1.0, "orders": 1.0, "billing": 1.0, "tansu": 1.0, "redis": 0.0, "postgres": 1.0}
    [(_, _, _, two)] = bench_report.ceilings_of(results(cpu, limit_rps=1000), "command")
    [(_, _, _, four)] = bench_report.ceilings_of(results(cpu, limit_rps=1000, cores=4), "command")
    [(_, _, _, faster)] = bench_report.ceilings_of(results(cpu, limit_rps=4000), "command")
    assert abs(two - 1.0) < 1e-9 and abs(four - 2.0) < 1e-9 and abs(faster - 0.25) < 1e-9
