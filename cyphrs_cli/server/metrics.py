"""Prometheus metrics of one ``cyphrs serve`` process, in a registry of its own (no
process-wide default registry, so two servers in one test process never mix).

With ``--processes N`` every worker keeps its values in prometheus-client's multiprocess
files (its supervisor starts it with ``PROMETHEUS_MULTIPROC_DIR`` set, which the library
reads when it is imported), and ``/metrics``, whichever worker answers, sums the files of
every worker, those of a worker that died and was replaced included."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.issuance = Counter(
            "cyphrs_issuance",
            "Certificates asked for over HTTP, by profile and outcome",
            ("operation", "profile", "outcome"),
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "cyphrs_request_seconds",
            "Time from request to response, by operation",
            ("operation",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_latency = Histogram(
            "cyphrs_ledger_commit_seconds",
            "Time of one group commit (sign and record every item, one transaction)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commits = Counter(
            "cyphrs_ledger_commits",
            "Group-commit transactions",
            registry=self.registry,
        )
        self.committed_items = Counter(
            "cyphrs_ledger_committed_items",
            "Certificates handed to the group committer, summed over its transactions",
            registry=self.registry,
        )
        self.token_refusals = Counter(
            "cyphrs_token_refusals",
            "Enrollment credentials refused (token or JWT), by rule",
            ("rule",),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "cyphrs_rate_limited",
            "Requests refused with 429, by limit",
            ("limit",),
            registry=self.registry,
        )

    def observe_commit(self, items: int, seconds: float) -> None:
        """The group committer's observer (called on its writer thread)."""
        self.commits.inc()
        self.committed_items.inc(items)
        self.commit_latency.observe(seconds)

    def exposition(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(every_worker)
