"""plan.py: the pure reload diff between two specs, compared by name, level by level.

Specs are built directly as frozen NodeSpec values (replicas once through the
validator, since it is what expands `replicas = N` into `name#i` siblings).
"""
from __future__ import annotations

import textwrap

import attrs
import pytest

from orchestrator.policy import plan
from orchestrator.policy.plan import Change, LevelPlan
from orchestrator.spec.source import parse_source
from orchestrator.spec.model import Backoff, Intensity, NodeSpec, Restart, Strategy
from orchestrator.spec.validate import validate_document


def worker(path: str, worker: str = "t.sleep", **keys) -> NodeSpec:
    return NodeSpec(name=path.rpartition("/")[2], path=path, worker=worker, **keys)


def sup(path: str, *children: NodeSpec, **keys) -> NodeSpec:
    return NodeSpec(name=path.rpartition("/")[2], path=path, children=children, **keys)


def root(*children: NodeSpec, **keys) -> NodeSpec:
    return sup("", *children, **keys)


def base() -> NodeSpec:
    """Three levels: root -> a, pipe (-> r, out (-> p, q)), z."""
    return root(
        worker("a"),
        sup("pipe", worker("pipe/r"), sup("pipe/out", worker("pipe/out/p"), worker("pipe/out/q"))),
        worker("z"),
    )


def replace_node(tree: NodeSpec, path: str, new: NodeSpec) -> NodeSpec:
    """`tree` with the node at `path` swapped for `new`."""
    if tree.path == path:
        return new
    return attrs.evolve(tree, children=tuple(replace_node(child, path, new) for child in tree.children))


def find(tree: NodeSpec, path: str) -> NodeSpec:
    return next(node for node in tree.walk() if node.path == path)


def evolve_at(tree: NodeSpec, path: str, **keys) -> NodeSpec:
    return replace_node(tree, path, attrs.evolve(find(tree, path), **keys))


# ----- plan_level ------------------------------------------------------------------


def test_identical_specs_keep_everything():
    level = plan.plan_level(base(), base())
    assert level == LevelPlan(remove=(), replace=(), add=(), keep=("a", "pipe", "z"))
    assert plan.plan_tree(base(), base()) == ([], 8)  # every node of the three levels


def test_added_children_come_in_new_spec_order():
    new = root(worker("n1"), *base().children, worker("n2"))
    level = plan.plan_level(base(), new)
    assert level.add == ("n1", "n2")
    assert level.keep == ("a", "pipe", "z")
    assert (level.remove, level.replace) == ((), ())


def test_removed_children_are_listed_in_old_spec_order():
    new = root(find(base(), "pipe"))
    level = plan.plan_level(base(), new)
    assert level.remove == ("a", "z")  # the supervisor stops them in reverse of this
    assert level.keep == ("pipe",)


@pytest.mark.parametrize("key, value", [
    ("args", {"interval": 2.0}),
    ("worker", "t.other"),
    ("ray_options", {"num_cpus": 2}),  # an actor's options are fixed when it is created
])
def test_restart_key_change_replaces_the_node(key, value):
    new = evolve_at(base(), "a", **{key: value})
    assert plan.changed_keys(find(base(), "a"), find(new, "a")) == (key,)
    level = plan.plan_level(base(), new)
    assert level.replace == ("a",)
    assert level.keep == ("pipe", "z")


@pytest.mark.parametrize("key, value, words", [
    ("restart", Restart.PERMANENT, ("restart",)),
    ("daemon", True, ("daemon",)),
    ("stop_timeout", 9.0, ("stop_timeout",)),
    ("backoff", Backoff(initial=0.5, cap=5.0), ("backoff",)),
    ("backoff", Backoff(initial=0.1, cap=9.0), ("backoff_max",)),
    ("intensity", Intensity(max_restarts=7, within=5.0), ("max_restarts",)),
    ("intensity", Intensity(max_restarts=3, within=7.0), ("within",)),
    ("strategy", Strategy.ONE_FOR_ALL, ("strategy",)),
])
def test_live_key_change_keeps_the_process(key, value, words):
    """Changes are named with the tree file's words (max_restarts, not intensity)."""
    path = "pipe" if key in ("intensity", "strategy") else "a"
    new = evolve_at(base(), path, **{key: value})
    assert plan.changed_keys(find(base(), path), find(new, path)) == words
    level = plan.plan_level(base(), new)
    assert level.replace == ()
    assert path in level.keep
    changes, unchanged = plan.plan_tree(base(), new)
    assert changes == [Change("update", path, words)]
    assert unchanged == 7


def test_worker_becoming_a_supervisor_is_a_kind_change():
    old = base()
    new = replace_node(old, "a", sup("a", worker("a/inner")))
    assert plan.changed_keys(find(old, "a"), find(new, "a"))[0] == "kind"
    assert plan.plan_level(old, new).replace == ("a",)


def test_supervisor_with_changed_children_is_kept_not_replaced():
    new = evolve_at(base(), "pipe/out/q", args={"x": 1})
    level = plan.plan_level(base(), new)
    assert level.keep == ("a", "pipe", "z")  # the change happens one level down
    out = plan.plan_level(find(base(), "pipe/out"), find(new, "pipe/out"))
    assert (out.replace, out.keep) == (("q",), ("p",))


def test_moved_node_is_removed_from_old_parent_and_added_under_new_one():
    old = base()
    pipe = find(old, "pipe")
    new = root(attrs.evolve(pipe, children=pipe.children + (worker("pipe/a"),)), worker("z"))
    assert plan.plan_level(old, new) == LevelPlan(remove=("a",), replace=(), add=(), keep=("pipe", "z"))
    assert plan.plan_level(pipe, find(new, "pipe")).add == ("a",)
    changes, unchanged = plan.plan_tree(old, new)
    assert changes == [Change("remove", "a"), Change("add", "pipe/a")]
    assert unchanged == 7  # every node but the moved one


def test_reorder_alone_changes_nothing():
    old = base()
    new = root(*reversed(old.children))
    level = plan.plan_level(old, new)
    assert (level.remove, level.replace, level.add) == ((), (), ())
    assert level.keep == ("z", "pipe", "a")  # new spec order
    assert plan.plan_tree(old, new) == ([], 8)


def test_plan_tree_lists_every_change_depth_first_with_untouched_count():
    old = base()
    new = root(
        worker("n0"),
        sup("pipe", worker("pipe/r", args={"v": 2}),
            sup("pipe/out", worker("pipe/out/p", restart=Restart.TEMPORARY), worker("pipe/out/new"))),
        worker("z"),
        stop_timeout=30.0,
    )
    changes, unchanged = plan.plan_tree(old, new)
    assert changes == [
        Change("update", "", ("stop_timeout",)),
        Change("remove", "a"),
        Change("add", "n0"),
        Change("restart", "pipe/r", ("args",)),
        Change("remove", "pipe/out/q"),
        Change("update", "pipe/out/p", ("restart",)),
        Change("add", "pipe/out/new"),
    ]
    assert unchanged == 3  # pipe, pipe/out, z


def test_removed_supervisor_is_one_change_not_one_per_descendant():
    new = root(worker("a"), worker("z"))
    assert plan.plan_tree(base(), new) == ([Change("remove", "pipe")], 3)


def test_held_flag_is_not_a_file_change():
    """`orch stop` marks nodes held; `orch diff` compares files and must not report it."""
    new = evolve_at(base(), "pipe/r", held=True)
    assert plan.changed_keys(find(base(), "pipe/r"), find(new, "pipe/r")) == ()
    assert plan.plan_tree(base(), new) == ([], 8)


# ----- replicas: expanded by the validator, then ordinary siblings -------------------


def replicated(count: int) -> NodeSpec:
    text = textwrap.dedent(f'''
        name = "r"
        [[children]]
        name = "first"
        worker = "t.sleep"
        [[children]]
        name = "web"
        worker = "t.sleep"
        replicas = {count}
        [[children]]
        name = "last"
        worker = "t.sleep"
    ''')
    data, smap = parse_source(text, "r.toml")
    return validate_document(data, smap, "r.toml").root


def test_replicas_expand_to_numbered_siblings_in_place():
    names = [child.name for child in replicated(3).children]
    assert names == ["first", "web#0", "web#1", "web#2", "last"]
    assert [child.path for child in replicated(2).children][1:3] == ["web#0", "web#1"]


def test_more_replicas_adds_only_the_extra_instances():
    level = plan.plan_level(replicated(3), replicated(5))
    assert level == LevelPlan(remove=(), replace=(), add=("web#3", "web#4"),
                              keep=("first", "web#0", "web#1", "web#2", "last"))
    changes, unchanged = plan.plan_tree(replicated(3), replicated(5))
    assert changes == [Change("add", "web#3"), Change("add", "web#4")]
    assert unchanged == 6


def test_fewer_replicas_removes_only_the_instances_past_the_count():
    level = plan.plan_level(replicated(5), replicated(2))
    assert level == LevelPlan(remove=("web#2", "web#3", "web#4"), replace=(), add=(),
                              keep=("first", "web#0", "web#1", "last"))
    changes, _ = plan.plan_tree(replicated(5), replicated(2))
    assert [change.op for change in changes] == ["remove"] * 3


def test_replicas_with_changed_args_restart_every_instance():
    old = replicated(2)
    new = attrs.evolve(old, children=tuple(
        attrs.evolve(child, args={"x": 1}) if child.name.startswith("web#") else child
        for child in old.children))
    assert plan.plan_level(old, new).replace == ("web#0", "web#1")


# ----- plan_reload: what one supervisor does to its own children ----------------------


def live(node: NodeSpec, *stopped: str):
    """The children of `node` as a supervisor knows them: running, except `stopped` names."""
    return [plan.LiveChild(child, running=child.name not in stopped) for child in node.children]


def flat(*names: str, **specs: NodeSpec) -> NodeSpec:
    """A root with workers `names`, some given as specs (by name) instead."""
    return root(*(specs.get(name) or worker(name) for name in names))


def test_reload_to_the_same_spec_touches_nothing():
    reload = plan.plan_reload(live(base()), base())
    assert reload == plan.ReloadPlan(keep=("a", "pipe", "z"), hold=(), release=(), remove=(), replace=(),
                                     add=(), retire=(), stop=(), start=(), send_down=())


def test_reload_stops_in_reverse_old_order_and_starts_in_new_order():
    old = flat("a", "b", "c", "d")
    new = flat("d", "b", "e", "a", b=worker("b", args={"v": 2}))
    reload = plan.plan_reload(live(old), new)
    assert (reload.remove, reload.replace, reload.add) == (("c",), ("b",), ("e",))
    assert reload.keep == ("d", "a")
    assert reload.stop == ("c", "b"), "reverse of the old order, c after b there"
    assert reload.start == ("b", "e"), "new spec order"
    assert reload.retire == ("c", "b")


def test_children_without_a_process_are_not_stopped_or_retired():
    old = flat("a", "b", "c")
    new = flat("a", "b", b=worker("b", args={"v": 2}))
    reload = plan.plan_reload(live(old, "b", "c"), new)
    assert (reload.remove, reload.replace) == (("c",), ("b",))
    assert reload.stop == () and reload.retire == ()
    assert reload.start == ("b",), "a replaced child starts anew whether or not it ran"


def test_holding_stops_a_kept_child_and_releasing_starts_it():
    old = flat("a", "b", "c")
    hold = flat("a", "b", "c", b=worker("b", held=True), c=worker("c", held=True))
    reload = plan.plan_reload(live(old), hold)
    assert (reload.hold, reload.release) == (("b", "c"), ())
    assert reload.keep == ("a", "b", "c") and reload.replace == ()
    assert reload.stop == ("c", "b") and reload.start == ()
    assert reload.retire == (), "a held child keeps its slot"
    release = plan.plan_reload(live(hold, "b", "c"), old)
    assert (release.hold, release.release) == ((), ("b", "c"))
    assert release.stop == () and release.start == ("b", "c")


def test_still_held_is_neither_held_again_nor_released():
    spec = flat("a", "b", b=worker("b", held=True))
    reload = plan.plan_reload(live(spec, "b"), spec)
    assert (reload.hold, reload.release, reload.stop, reload.start) == ((), (), (), ())


def test_stop_order_mixes_removed_replaced_and_held_by_old_position():
    old = flat("a", "b", "c", "d")
    new = flat("a", "b", "d", a=worker("a", args={"v": 1}), b=worker("b", held=True))
    reload = plan.plan_reload(live(old), new)
    assert reload.stop == ("c", "b", "a")
    assert reload.start == ("a",)


def test_changed_running_supervisor_children_are_sent_their_part():
    new = evolve_at(base(), "pipe/out/q", args={"x": 1})
    reload = plan.plan_reload(live(base()), new)
    assert reload.send_down == ("pipe",)
    assert reload.keep == ("a", "pipe", "z") and reload.stop == () and reload.start == ()
    assert plan.plan_reload(live(base(), "pipe"), new).send_down == (), "no process to tell"
    assert plan.plan_reload(live(base()), base()).send_down == (), "unchanged: nothing to apply"


def test_a_supervisor_child_being_held_is_sent_its_part_and_stopped():
    """It is told (and waited for) like any kept supervisor whose spec changed; its
    exit then counts as its acknowledgement."""
    new = evolve_at(base(), "pipe", held=True)
    reload = plan.plan_reload(live(base()), new)
    assert reload.hold == ("pipe",) and reload.send_down == ("pipe",) and reload.stop == ("pipe",)


def test_changed_worker_kept_in_place_is_not_sent_anything():
    new = evolve_at(base(), "a", stop_timeout=9.0)
    reload = plan.plan_reload(live(base()), new)
    assert reload.keep == ("a", "pipe", "z") and reload.send_down == ()


def test_reload_plan_agrees_with_plan_level():
    new = root(worker("n0"), *base().children[1:], worker("a", worker="t.other"))
    level = plan.plan_level(base(), new)
    reload = plan.plan_reload(live(base()), new)
    assert (reload.remove, reload.replace, reload.add, reload.keep) == \
        (level.remove, level.replace, level.add, level.keep)


def test_plan_reload_is_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.plan_reload(live(base()), base()).stop = ("a",)
