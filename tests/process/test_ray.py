"""Ray workers (backend = "ray") against a real multi-node Ray cluster on this machine.

One cluster for the module (a head and two worker nodes, told apart by the custom
resources `a` and `b`, both offering `box`), every connection on loopback. Facts
come from the tree view, from Ray's GCS (actor table) and from the OS (pids: the
nodes all run here). Trees are started without `wait_running` (which checks that
each node's OS parent is its supervisor: a Ray worker's is Ray's worker machinery).
"""
import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional

import psutil
import pytest

from orchestrator.errors import InvalidInput
from orchestrator.spec import ray_keys
from orchestrator.spec.source import load_source
from orchestrator.spec.validate import validate_document
from orchestrator.testing import json_lines, wait_for
from tests.helpers import PLUGINS, toml_value

# Read by Ray when it is imported (here, and in every orch process the tests start):
# "0" makes Ray use the loopback address for this machine instead of its public one.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
LOOPBACK = "127.0.0.1"
STORE = 80 * 1024 * 1024
# A lost node is declared dead after 3 missed health checks 500 ms apart (Ray's default: 5 x 3 s).
HEALTH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
          "health_check_failure_threshold": 3}
RAY_PLUGIN = PLUGINS / "rayworkers.py"
NEEDS_RAY = "Ray is not installed (pip install -e '.[ray,test]')"

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]


# ----- the cluster ----------------------------------------------------------------------------


class Cluster:
    """The module's cluster, and this test process connected to it as a driver."""

    def __init__(self) -> None:
        ray = pytest.importorskip("ray", reason=NEEDS_RAY)
        from ray.cluster_utils import Cluster as RayCluster

        self.ray = ray
        self.cluster = RayCluster(initialize_head=True, head_node_args=dict(
            num_cpus=1, object_store_memory=STORE, include_dashboard=False, node_ip_address=LOOPBACK,
            resources={"head": 1}, _system_config=HEALTH))
        self.workers = {name: self.add(name) for name in ("a", "b")}
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, _node_ip_address=LOOPBACK, logging_level="WARNING",
                 log_to_driver=False)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, name: str):
        return self.cluster.add_node(num_cpus=4, object_store_memory=STORE, node_ip_address=LOOPBACK,
                                     resources={"box": 4, name: 1})

    def actors(self) -> Dict[str, str]:
        """actor id -> state (ALIVE, DEAD, ...) of every orch actor the cluster knows, from the GCS.

        (`ray.util.state.list_actors` asks the dashboard, which these clusters do not run.)
        """
        import ray._private.state

        return {actor_id: info["State"] for actor_id, info in ray._private.state.actors().items()
                if info.get("ActorClassName") == "WorkerActor"}

    def alive(self) -> List[str]:
        return [actor_id for actor_id, state in self.actors().items() if state == "ALIVE"]

    def shutdown(self) -> None:
        try:
            self.ray.shutdown()
        finally:
            self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster():
    handle = Cluster()
    try:
        yield handle
    finally:
        handle.shutdown()


@pytest.fixture
def env(orch_env):
    orch_env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return orch_env


# ----- trees ------------------------------------------------------------------------------------


def worker(name: str, fn: str = "r.sleep", **keys) -> str:
    lines = [f'name = "{name}"', f'worker = "{fn}"'] + [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    return "  [[children.children]]\n" + "".join(f"  {line}\n" for line in lines)


def ray_tree(name: str, address: str, workers: str, *, farm: str = "", root: str = "", local: bool = True) -> str:
    head = f'name = "{name}"\nplugins = [{toml_value(str(RAY_PLUGIN))}]\n{root}\n'
    if local:
        head += '[[children]]\nname = "local"\nworker = "r.sleep"\n'
    return head + (f'[[children]]\nname = "farm"\nbackend = "ray"\n'
                   f'ray = {{ address = "{address}", node_ip_address = "{LOOPBACK}" }}\n{farm}\n{workers}')


def rows(tree) -> Dict[str, dict]:
    return {row["path"]: row for row in tree.nodes() if row["kind"] != "helper"}


def running(tree, paths: List[str], other_than: Optional[Dict[str, int]] = None) -> Optional[Dict[str, dict]]:
    """The rows of `paths` once all run (with a pid other than `other_than`'s), else None."""
    now = rows(tree)
    picked = {path: now.get(path) for path in paths}
    for path, row in picked.items():
        if row is None or row["state"] != "running" or not row["pid"]:
            return None
        if other_than and other_than.get(path) == row["pid"]:
            return None
    return picked


def events(tree, path: str, kind: str) -> List[dict]:
    """The events of `kind` for `path`, from the tree's events.jsonl."""
    return [event for event in json_lines(tree.log_dir / "events.jsonl")
            if event["path"] == path and event["event"] == kind]


def up(orch_tree, text: str, paths: List[str], timeout: float = 30.0):
    tree = orch_tree(text, wait=False)
    tree.wait_for(lambda: running(tree, paths), timeout, f"{paths} running")
    return tree


# ----- validation (no cluster needed) ---------------------------------------------------------


def problems(text: str) -> List[str]:
    data, smap = load_source("t.toml", text)
    with pytest.raises(InvalidInput) as caught:
        validate_document(data, smap, "t.toml")
    return [str(problem) for problem in caught.value.problems]


def test_ray_backend_without_ray_fails_validation_with_the_install_command(monkeypatch):
    monkeypatch.setattr(ray_keys, "ray_installed", lambda: False)
    found = problems('name = "t"\n[[children]]\nname = "farm"\nbackend = "ray"\n'
                     '  [[children.children]]\n  name = "w"\n  worker = "x.y"\n')
    assert found == ["t.toml:4: farm: backend = \"ray\" needs Ray, which is not installed here: "
                     "pip install 'orch[ray]'"]


def test_what_cannot_work_on_ray_is_reported_all_at_once(monkeypatch):
    monkeypatch.setattr(ray_keys, "ray_installed", lambda: True)
    found = problems('name = "t"\n'                                           # 1
                     '[[children]]\n'                                         # 2
                     'name = "farm"\n'                                        # 3
                     'backend = "ray"\n'                                      # 4
                     'ray = { address = "nowhere" }\n'                        # 5
                     '  [[children.children]]\n'                              # 6
                     '  name = "w"\n'                                         # 7
                     '  worker = "x.y"\n'                                     # 8
                     '  cwd = "."\n'                                          # 9
                     '  ray_options = { num_cpu = 1, lifetime = "detached" }\n'  # 10
                     '  [[children.children]]\n'                              # 11
                     '  name = "sub"\n'                                       # 12
                     '    [[children.children.children]]\n'                   # 13
                     '    name = "x"\n'                                       # 14
                     '    worker = "x.y"\n')                                  # 15
    assert [line.split(": ")[0] for line in found] == ["t.toml:5", "t.toml:9", "t.toml:10", "t.toml:11"]
    assert "did you mean 'num_cpus'" in found[2] and "'lifetime' is not allowed" in found[2]
    assert "must be workers" in found[3]



def test_a_ray_supervisor_below_a_memory_limit_is_refused(monkeypatch):
    monkeypatch.setattr(ray_keys, "ray_installed", lambda: True)
    found = problems('name = "t"\n[[children]]\nname = "outer"\nmax_memory = "1GB"\n'
                     '  [[children.children]]\n  name = "farm"\n  backend = "ray"\n'
                     '    [[children.children.children]]\n    name = "w"\n    worker = "x.y"\n')
    assert found == ["t.toml:7: outer/farm: a Ray supervisor cannot be below 'outer', which has max_memory: "
                     "orch measures local processes only; remove max_memory there "
                     "(ray_options.memory limits an actor)"]


# ----- against the cluster --------------------------------------------------------------------


def test_ray_workers_run_as_actors_log_and_show_where(cluster, orch_tree, env):
    text = ray_tree("rayshow", cluster.address,
                    worker("crawler", replicas=2, ray_options={"num_cpus": 1, "resources": {"box": 1}})
                    + worker("talk", "r.say", args={"text": "from ray"}))
    tree = up(orch_tree, text, ["local", "farm/crawler#0", "farm/crawler#1", "farm/talk"])
    now = rows(tree)
    for path in ("farm/crawler#0", "farm/crawler#1", "farm/talk"):
        row = now[path]
        assert row["backend"] == "ray" and row["host"] and row["node_id"] and row["actor_id"], row
        assert not row["drift"]
        assert row["actor_id"] in cluster.alive()
        # Its pid is the actor's process (here: on this machine), whose parent is Ray's raylet.
        assert "raylet" in psutil.Process(psutil.Process(row["pid"]).ppid()).name()
    assert now["local"]["backend"] == "local" and now["local"]["host"] is None
    text_view = tree.orch("tree", tree.name).stdout
    assert f"ray {now['farm/talk']['host']}/{now['farm/talk']['node_id'][:8]}" in text_view
    log = tree.log_dir / "farm" / "talk.log"
    tree.wait_for(lambda: log.exists() and "out: from ray" in log.read_text() and "err: from ray" in log.read_text(),
                  10, "the Ray worker's stdout and stderr in its node log")
    # Neither the root nor a local supervisor or worker imported Ray; the Ray supervisor did.
    assert not _maps_ray(tree.root_pid) and not _maps_ray(now["local"]["pid"])
    assert _maps_ray(now["farm"]["pid"])
    # Every listening socket of the cluster and of the Ray supervisor is on loopback.
    raylets = [proc for proc in psutil.Process().children(recursive=True)
               if proc.name() in ("raylet", "gcs_server")]
    listening = [conn.laddr.ip for proc in raylets + [psutil.Process(now["farm"]["pid"])]
                 for conn in proc.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN]
    assert listening and set(listening) <= {LOOPBACK, "::ffff:127.0.0.1"}, listening


def _maps_ray(pid: int) -> bool:
    """The process has Ray's native core loaded: it imported ray."""
    return "_raylet" in Path(f"/proc/{pid}/maps").read_text()


EXPECT_NEW = {"one_for_one": {"b"}, "one_for_all": {"a", "b", "c"}, "rest_for_one": {"b", "c"}}


@pytest.mark.parametrize("strategy", sorted(EXPECT_NEW))
def test_sigkilled_actor_is_restarted_by_strategy(cluster, orch_tree, env, strategy):
    text = ray_tree(f"raykill-{strategy.replace('_', '')}", cluster.address,
                    worker("a") + worker("b") + worker("c"), farm=f'strategy = "{strategy}"', local=False)
    paths = ["farm/a", "farm/b", "farm/c"]
    tree = up(orch_tree, text, paths)
    before = {path: row["pid"] for path, row in rows(tree).items() if path in paths}
    started = time.monotonic()
    os.kill(before["farm/b"], signal.SIGKILL)
    expect_new = {f"farm/{name}" for name in EXPECT_NEW[strategy]}
    after = tree.wait_for(lambda: running(tree, sorted(expect_new), before), 20, "the restart")
    took = time.monotonic() - started
    now = running(tree, paths)
    assert now is not None
    assert {path for path in paths if now[path]["pid"] != before[path]} == expect_new
    assert after["farm/b"]["restarts"] == 1 and after["farm/b"]["failures"] == 1
    assert took < 10, took
    # A dead actor is a death by SIGKILL; a bystander's SIGTERM ends it as a local worker's would.
    assert [event["signal"] for event in events(tree, "farm/b", "exited")] == [signal.SIGKILL]
    if strategy == "one_for_all":
        assert [event["signal"] for event in events(tree, "farm/a", "stopped")] == [signal.SIGTERM]


def test_lost_node_actors_come_back_on_the_other_node(cluster, orch_tree, env):
    text = ray_tree("raynode", cluster.address,
                    worker("w", replicas=2, ray_options={"resources": {"box": 1}}), local=False,
                    farm="max_restarts = 10")
    tree = up(orch_tree, text, ["farm/w#0", "farm/w#1"])
    before = rows(tree)
    victim_id = before["farm/w#0"]["node_id"]
    name, victim = next((name, node) for name, node in cluster.workers.items() if node.node_id == victim_id)
    try:
        cluster.cluster.remove_node(victim, allow_graceful=False)
        on_victim = {path for path in ("farm/w#0", "farm/w#1") if before[path]["node_id"] == victim_id}
        pids = {path: before[path]["pid"] for path in on_victim}
        after = tree.wait_for(lambda: running(tree, sorted(on_victim), pids), 30, "replacements elsewhere")
        assert all(row["node_id"] != victim_id for row in after.values())
        assert all(event["signal"] == signal.SIGKILL for path in on_victim
                   for event in events(tree, path, "exited"))
    finally:
        cluster.workers[name] = cluster.add(name)
        cluster.cluster.wait_for_nodes()


def test_intensity_escalates_out_of_the_ray_supervisor(cluster, orch_tree, env):
    text = ray_tree("rayesc", cluster.address, worker("bad", "r.fail", backoff=0),
                    farm="max_restarts = 1\nwithin = 30", root="max_restarts = 0")
    tree = orch_tree(text, wait=False)
    assert tree.wait_exit(60) == 1  # farm gave up; the root's intensity 0 gave up on farm
    output = tree.read_output()
    assert "giving up" in output and "farm" in output
    assert tree.wait_for(lambda: not cluster.alive(), 10, "no actor left")


def test_down_and_a_killed_ray_supervisor_leave_no_actor(cluster, orch_tree, env):
    text = ray_tree("raydown", cluster.address, worker("w", replicas=2), local=False)
    paths = ["farm/w#0", "farm/w#1"]
    tree = up(orch_tree, text, paths)
    first = {rows(tree)[path]["actor_id"] for path in paths}
    supervisor = rows(tree)["farm"]["pid"]
    os.kill(supervisor, signal.SIGKILL)  # the root restarts farm; its driver's actors die with it
    tree.wait_for(lambda: all(cluster.actors().get(actor) == "DEAD" for actor in first), 15,
                  "the killed supervisor's actors dead")
    tree.wait_for(lambda: running(tree, paths + ["farm"], {"farm": supervisor}), 30, "farm back")
    assert tree.orch("down", tree.name).returncode == 0
    assert tree.wait_exit(20) == 0
    assert wait_for(lambda: not cluster.alive(), 10, "no actor left after orch down")


def test_stop_start_restart_graceful_term_and_a_raising_worker(cluster, orch_tree, tmp_path, env):
    marks = tmp_path / "marks"
    text = ray_tree("raycmd", cluster.address,
                    worker("g", "r.graceful", args={"log": str(marks), "label": "g"})
                    + worker("boom", "r.fail", restart="never"), local=False)
    tree = up(orch_tree, text, ["farm/g"])
    pid = rows(tree)["farm/g"]["pid"]
    assert tree.orch("stop", "farm/g", "--tree", tree.name).returncode == 0
    tree.wait_for(lambda: marks.exists() and "stop g" in marks.read_text(), 10, "its own SIGTERM handler ran")
    assert rows(tree)["farm/g"]["state"] == "stopped"
    assert [event["exit_code"] for event in events(tree, "farm/g", "stopped")] == [0]  # its handler's sys.exit(0)
    assert tree.orch("start", "farm/g", "--tree", tree.name).returncode == 0
    tree.wait_for(lambda: running(tree, ["farm/g"], {"farm/g": pid}), 20, "started again")
    pid = rows(tree)["farm/g"]["pid"]
    assert tree.orch("restart", "farm/g", "--tree", tree.name).returncode == 0
    tree.wait_for(lambda: running(tree, ["farm/g"], {"farm/g": pid}), 20, "restarted")
    assert rows(tree)["farm/boom"]["state"] == "failed"
    log = tree.log_dir / "farm" / "boom.log"
    assert "RuntimeError: boom from a ray worker" in log.read_text()


def test_reload_replaces_only_the_changed_actor(cluster, orch_tree, env):
    text = ray_tree("rayreload", cluster.address,
                    worker("x", args={"label": "x1"}) + worker("y", args={"label": "y"}), local=False)
    tree = up(orch_tree, text, ["farm/x", "farm/y"])
    before = rows(tree)
    tree.file.write_text(text.replace('"x1"', '"x2"'))
    result = tree.orch("reload", str(tree.file))
    assert result.returncode == 0, result.stderr + result.stdout
    after = tree.wait_for(lambda: running(tree, ["farm/x"], {"farm/x": before["farm/x"]["pid"]}), 20, "x replaced")
    now = rows(tree)
    assert after["farm/x"]["actor_id"] != before["farm/x"]["actor_id"]
    assert (now["farm/y"]["pid"], now["farm/y"]["actor_id"]) == (before["farm/y"]["pid"], before["farm/y"]["actor_id"])
    assert before["farm/x"]["actor_id"] not in cluster.alive()
