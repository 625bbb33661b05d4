"""Two `reranker serve` replicas behind HAProxy: a rolling restart under steady load fails no
request (bench/scaleout.py with short phases on the tiny model; real figures in
docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scaleout import find_haproxy, format_report, haproxy_config, run

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

needs_haproxy = pytest.mark.skipif(
    find_haproxy() is None,
    reason="haproxy is not installed (CI installs Debian's; locally: apt-get install haproxy)",
)


@needs_haproxy
def test_rolling_restart_behind_haproxy_fails_no_request(xlmr_dir: str) -> None:
    report = run(xlmr_dir, clients=4, requests=16, restart_clients=2, settle_s=0.5)
    text = format_report(report)
    restart = report.restart

    # The rolling restart: every request answered 200, none lost to a transport error.
    assert restart.outcomes, text
    assert restart.failures == 0, text
    assert dict(restart.statuses) == {"200": len(restart.outcomes)}, text
    assert "failed requests during the restart: 0" in text
    # Each replica was drained (exit 0 after SIGTERM) and replaced by a new process.
    assert [s.replica for s in restart.steps] == ["a", "b"], text
    assert all(s.exit_status == 0 and s.pids[0] != s.pids[1] for s in restart.steps), text
    # Both replicas answered during the restart, by the proxy's counts.
    assert all(n > 0 for n in restart.served.values()), text

    # Throughput: one replica (B in maintenance) and two, every request answered.
    for phase in (report.one, report.two):
        assert dict(phase.stats.statuses) == {"200": 16}, text
        assert phase.stats.summary()["requests_per_s"] > 0
        assert phase.cores["a"] > 0, text
    assert report.one.served == {"a": 16, "b": 0}, text
    assert report.two.served["a"] > 0 and report.two.served["b"] > 0, text
    assert report.ratio > 0


def test_the_proxy_retries_only_what_never_reached_the_model() -> None:
    """Not a timeout, nor a 5xx other than 503: such a request may have been scored."""
    cfg = haproxy_config(8000, Path("/tmp/x.sock"), {"a": 8001, "b": 8002})
    assert "retry-on conn-failure empty-response 503\n" in cfg
    assert "option httpchk GET /ready" in cfg and "http-check expect status 200" in cfg
    assert "server a 127.0.0.1:8001" in cfg and "server b 127.0.0.1:8002" in cfg
