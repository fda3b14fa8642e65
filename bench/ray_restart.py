"""Restart latency of a killed Ray worker under orch, beside Ray's own actor restart (`max_restarts`),
on the same local cluster; recovery from the loss of a node; memory per node and per actor.

    .venv/bin/python bench/ray_restart.py [SAMPLES]     # 5 by default; needs `pip install -e '.[ray]'`

One cluster on loopback: a head (no worker resources) and two worker nodes offering `box`.
Latency is from the SIGKILL (or the node's removal) to the first moment the replacement
answers: for Ray, a method call on the restarted actor returns; for orch, the tree view
(control socket, polled every 5 ms) shows the worker running with a new pid.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback, before Ray is imported

import psutil  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from orchestrator.root import control  # noqa: E402

LOOPBACK = "127.0.0.1"
STORE = 80 * 1024 * 1024
# A lost node is declared dead after 3 missed health checks 500 ms apart (Ray's default: 5 x 3 s).
HEALTH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
          "health_check_failure_threshold": 3}
PLUGIN = REPO / "tests" / "plugins" / "rayworkers.py"


@ray.remote
class Pinger:
    def pid(self):
        return os.getpid()

    def node(self):
        return ray.get_runtime_context().get_node_id()


def start_cluster():
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, object_store_memory=STORE, include_dashboard=False, node_ip_address=LOOPBACK,
        _system_config=HEALTH))
    nodes = [add_node(cluster) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, _node_ip_address=LOOPBACK, logging_level="WARNING", log_to_driver=False)
    return cluster, nodes


def add_node(cluster):
    return cluster.add_node(num_cpus=4, object_store_memory=STORE, node_ip_address=LOOPBACK, resources={"box": 4})


def poll(predicate, timeout=60.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("no answer in time")


# ----- Ray's own restart --------------------------------------------------------------------


def ray_kill_restart(samples):
    actor = Pinger.options(max_restarts=-1, max_task_retries=-1, resources={"box": 1}).remote()
    times = []
    for _ in range(samples):
        pid = ray.get(actor.pid.remote())
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        poll(lambda: ray.get(actor.pid.remote()) != pid)
        times.append(time.monotonic() - started)
    ray.kill(actor)
    return times


def ray_node_loss(cluster, nodes):
    actor = Pinger.options(max_restarts=-1, max_task_retries=-1, resources={"box": 1}).remote()
    node_id = ray.get(actor.node.remote())
    victim = next(node for node in nodes if node.node_id == node_id)
    started = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    poll(lambda: ray.get(actor.node.remote()) != node_id)
    took = time.monotonic() - started
    nodes[nodes.index(victim)] = add_node(cluster)
    cluster.wait_for_nodes()
    ray.kill(actor)
    return took


# ----- orch -------------------------------------------------------------------------------------


class Tree:
    def __init__(self, address, directory):
        self.env = dict(os.environ, ORCH_DISABLE_PLUGIN_AUTOLOAD="1", ORCH_LOG_DIR=str(directory / "logs"))
        self.env[control.ENV_RUN_DIR] = str(directory / "run")
        os.makedirs(self.env[control.ENV_RUN_DIR], exist_ok=True)
        self.file = directory / "bench.toml"
        self.file.write_text(
            f'name = "raybench"\nplugins = [{json.dumps(str(PLUGIN))}]\nmax_restarts = 100\n'
            '[[children]]\nname = "local"\nworker = "r.sleep"\n'
            f'[[children]]\nname = "farm"\nbackend = "ray"\nmax_restarts = 100\nwithin = 1.0\n'
            f'ray = {{ address = "{address}", node_ip_address = "{LOOPBACK}" }}\n'
            '  [[children.children]]\n  name = "w"\n  worker = "r.sleep"\n  backoff = 0\n'
            '  ray_options = { resources = { box = 1 } }\n')
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", str(self.file)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ[control.ENV_RUN_DIR] = self.env[control.ENV_RUN_DIR]
        poll(lambda: self.row("farm/w").get("state") == "running", timeout=60, interval=0.05)

    def rows(self):
        try:
            return {row["path"]: row for row in control.request("raybench", {"cmd": "tree"}, timeout=5)["nodes"]}
        except (OSError, control.RuntimeFailure):
            return {}

    def row(self, path):
        return self.rows().get(path, {})

    def replaced(self, pid):
        row = self.row("farm/w")
        return row if row.get("state") == "running" and row.get("pid") not in (None, pid) else None

    def down(self):
        subprocess.run([sys.executable, "-m", "orchestrator", "down", "raybench"], env=self.env,
                       capture_output=True, timeout=60)
        self.proc.wait(30)


def orch_kill_restart(tree, samples):
    times = []
    for _ in range(samples):
        pid = tree.row("farm/w")["pid"]
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        poll(lambda: tree.replaced(pid))
        times.append(time.monotonic() - started)
        time.sleep(0.3)  # outside the measured time: let the old actor's cleanup finish
    return times


def orch_node_loss(tree, cluster, nodes):
    row = tree.row("farm/w")
    victim = next(node for node in nodes if node.node_id == row["node_id"])
    started = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    poll(lambda: tree.replaced(row["pid"]))
    took = time.monotonic() - started
    nodes[nodes.index(victim)] = add_node(cluster)
    cluster.wait_for_nodes()
    return took


def memory(tree):
    rows = tree.rows()
    mib = 1024 * 1024
    rss = lambda pid: psutil.Process(pid).memory_info().rss / mib  # noqa: E731
    uss = lambda pid: psutil.Process(pid).memory_full_info().uss / mib  # noqa: E731
    raylets = [proc for proc in psutil.Process().children(recursive=True) if proc.name() == "raylet"]
    return {
        "local supervisor (root) RSS MiB": rss(rows[""]["pid"]),
        "Ray supervisor (farm) RSS MiB": rss(rows["farm"]["pid"]),
        "Ray supervisor (farm) USS MiB": uss(rows["farm"]["pid"]),
        "local worker RSS MiB": rss(rows["local"]["pid"]),
        "Ray worker actor RSS MiB": rss(rows["farm/w"]["pid"]),
        "Ray worker actor USS MiB": uss(rows["farm/w"]["pid"]),
        "raylet per node RSS MiB": statistics.mean(proc.memory_info().rss / mib for proc in raylets),
    }


def main(samples=5):
    cluster, nodes = start_cluster()
    try:
        ray_times = ray_kill_restart(samples)
        ray_node = ray_node_loss(cluster, nodes)
        with tempfile.TemporaryDirectory() as directory:
            tree = Tree(cluster.address, Path(directory))
            try:
                orch_times = orch_kill_restart(tree, samples)
                mem = memory(tree)
                orch_node = orch_node_loss(tree, cluster, nodes)
            finally:
                tree.down()
    finally:
        ray.shutdown()
        cluster.shutdown()
    ray_median, orch_median = statistics.median(ray_times), statistics.median(orch_times)
    print(f"{'measure':<44}{'Ray max_restarts':>18}{'orch':>12}")
    print(f"{'SIGKILLed worker back, median s (n=%d)' % samples:<44}{ray_median:>18.3f}{orch_median:>12.3f}")
    print(f"{'SIGKILLed worker back, max s':<44}{max(ray_times):>18.3f}{max(orch_times):>12.3f}")
    print(f"{'lost node: worker back elsewhere, s':<44}{ray_node:>18.3f}{orch_node:>12.3f}")
    print(f"orch / Ray restart (median): {orch_median / ray_median:.2f}x (target <= 2x)")
    for key, value in mem.items():
        print(f"{key:<44}{value:>30.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
