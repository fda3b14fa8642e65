"""What the events mean for each node, and the Prometheus collector and server that show it."""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Optional, Tuple

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from orchestrator.events import Event

ENV_HOST = "ORCH_PROMETHEUS_HOST"
ENV_PORT = "ORCH_PROMETHEUS_PORT"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464

# Events that mean the node now has a running process, and those that mean it has none.
UP_EVENTS = frozenset({"started", "ready"})
DOWN_EVENTS = frozenset({"exited", "stopped", "gave_up"})
# Events about one node's life: the node gets its series from the first of these.
# The others (hook_error, events_lost, log_error, orphan_stopped) only count in
# orch_events_total, so they never invent a node that is not in the tree.
NODE_EVENTS = UP_EVENTS | DOWN_EVENTS | frozenset(
    {"restarting", "backoff", "stopping", "held", "released", "reloaded"})

Key = Tuple[str, str]  # (tree, path)


class ExporterError(RuntimeError):
    """The metrics server could not start: a bad address setting, or the port is taken."""


class NodeMetrics:
    """What the events said about one node so far."""

    __slots__ = ("up", "started_ts", "restarts", "last_exit")

    def __init__(self) -> None:
        self.up = False
        self.started_ts: Optional[float] = None  # ts of the last `started` event
        self.restarts = 0                         # orch's count, from the latest event that has one
        self.last_exit: Optional[int] = None      # exit code, or -signal; None before any exit


def exit_status(event: "Event") -> Optional[int]:
    """The event's exit code, or minus the signal number when a signal ended the process
    (as `subprocess` reports it: SIGKILL is -9); None when the event carries neither."""
    if event.signal is not None:
        return -event.signal
    return event.exit_code


def address_from_env() -> Tuple[str, int]:
    """(host, port) from ORCH_PROMETHEUS_HOST / ORCH_PROMETHEUS_PORT; ExporterError if invalid."""
    host = os.environ.get(ENV_HOST, "").strip() or DEFAULT_HOST
    text = os.environ.get(ENV_PORT, "").strip()
    if not text:
        return host, DEFAULT_PORT
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ExporterError(f"orch-prometheus: {ENV_PORT} must be a port number (0-65535), "
                            f"got {text!r}; metrics are counted but not served")
    return host, port


class Exporter:
    """Turns events into per-node state and serves it as Prometheus metrics.

    `handle` is what the hook calls; `record` only updates the state (no server), which is
    what a test of the metric logic needs. The HTTP server thread reads the state through
    `collect` at each scrape, under the same lock the hook writes it with.
    """

    def __init__(self, host: Optional[str] = None, port: Optional[int] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._host = host
        self._port = port
        self._clock = clock  # wall clock, as Event.ts: uptime = now - ts of `started`
        self._lock = threading.Lock()
        self._nodes: Dict[Key, NodeMetrics] = {}
        self._events: Dict[Tuple[str, str, str], int] = {}  # (tree, path, kind) -> count
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        self._server: Optional["WSGIServer"] = None
        self._thread: Optional[threading.Thread] = None
        self._tried = False
        self.address: Optional[Tuple[str, int]] = None  # where it serves, once it does

    def handle(self, event: "Event") -> None:
        """Record the event; on the first call start the server, raising ExporterError
        (once: later calls only record) when it cannot."""
        self.record(event)
        if not self._tried:
            self._tried = True
            self.serve()

    def record(self, event: "Event") -> None:
        with self._lock:
            counted = (event.tree, event.path, event.event)
            self._events[counted] = self._events.get(counted, 0) + 1
            if event.event not in NODE_EVENTS:
                return
            node = self._nodes.setdefault((event.tree, event.path), NodeMetrics())
            if event.event == "started":
                node.started_ts = event.ts
            if event.event in UP_EVENTS:
                node.up = True
            elif event.event in DOWN_EVENTS:
                node.up = False
            if event.restarts is not None:
                # orch's own count (the RESTARTS column of `orch tree`), not a count of
                # `restarting` events: a restart after a backoff wait has none (exited,
                # backoff, started). Taken as it is, it also survives lost events; it only
                # goes down for a node that was removed and added again, which Prometheus
                # treats as a counter reset.
                node.restarts = event.restarts
            status = exit_status(event)
            if status is not None:
                node.last_exit = status

    def serve(self) -> Tuple[str, int]:
        """Start the HTTP server in a daemon thread; (host, port) it listens on."""
        if self.address is not None:
            return self.address
        if self._host is None or self._port is None:
            env_host, env_port = address_from_env()
            host = env_host if self._host is None else self._host
            port = env_port if self._port is None else self._port
        else:
            host, port = self._host, self._port
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except (OSError, ValueError) as error:  # socket.gaierror is an OSError
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise ExporterError(
                f"orch-prometheus: cannot serve metrics on {host}:{port}: {reason}; set "
                f"{ENV_PORT} (and {ENV_HOST}) to a free address. Events are still counted, "
                "but no metrics are served until the hook process restarts") from None
        bound = self._server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    def close(self) -> None:
        """Stop serving (the hook process never needs it: its server dies with it)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.address = None

    def collect(self) -> Iterator[Metric]:
        labels = ["tree", "path"]
        up = GaugeMetricFamily("orch_node_up", "1 while the node has a running process "
                               "(started/ready), 0 after exited/stopped/gave_up", labels=labels)
        restarts = CounterMetricFamily("orch_node_restarts", "Restarts of the node, as orch "
                                       "counts them (orch tree's RESTARTS)", labels=labels)
        last_exit = GaugeMetricFamily("orch_node_last_exit_code", "Exit code of the node's last "
                                      "process; minus the signal number when a signal ended it "
                                      "(SIGKILL: -9); absent before the first exit", labels=labels)
        uptime = GaugeMetricFamily("orch_node_uptime_seconds", "Seconds since the node's "
                                   "process started; 0 while it has none", labels=labels)
        events = CounterMetricFamily("orch_events", "orch events received, by kind",
                                     labels=["tree", "path", "event"])
        now = self._clock()
        with self._lock:
            for (tree, path), node in sorted(self._nodes.items()):
                values = [tree, path]
                up.add_metric(values, 1.0 if node.up else 0.0)
                restarts.add_metric(values, float(node.restarts))
                if node.last_exit is not None:
                    last_exit.add_metric(values, float(node.last_exit))
                seconds = 0.0
                if node.up and node.started_ts is not None:
                    seconds = max(0.0, now - node.started_ts)
                uptime.add_metric(values, seconds)
            for (tree, path, kind), count in sorted(self._events.items()):
                events.add_metric([tree, path, kind], float(count))
        yield from (up, restarts, last_exit, uptime, events)


class _Collector(Collector):
    """Reads the exporter's state at scrape time (so uptime is as of the scrape)."""

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        return self._exporter.collect()
