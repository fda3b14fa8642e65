"""The root's `[log]` table: checked like every other key, resolved to a LogSpec with an absolute dir."""
from __future__ import annotations

import os
import textwrap

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.spec.logconf import default_log_dir
from orchestrator.spec.model import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_BYTES, LogFormat, LogSpec
from orchestrator.spec.source import parse_source
from orchestrator.spec.validate import load_tree, validate_document
from tests.helpers import FakeCatalog


def sleep():
    pass


def fake_loader(plugins):
    return FakeCatalog(demo_sleep=sleep)


CHILD = '\n[[children]]\nname = "w"\nworker = "demo.sleep"\n'


def write(tmp_path, text: str, name: str = "tree.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def load(path: str, **kwargs):
    return load_tree(path, catalog_loader=fake_loader, **kwargs)


def problems(path: str):
    with pytest.raises(InvalidInput) as caught:
        load(path)
    return [str(problem) for problem in caught.value.problems]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No log-location variables set, and a HOME of our own."""
    for name in ("ORCH_LOG_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    return home


# -- the default location ------------------------------------------------------------


def test_orch_log_dir_comes_first():
    env = {"ORCH_LOG_DIR": "/var/log/orch", "XDG_STATE_HOME": "/state", "HOME": "/home/u"}
    assert default_log_dir("demo", env) == "/var/log/orch/demo"


def test_a_relative_orch_log_dir_is_made_absolute_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_log_dir("demo", {"ORCH_LOG_DIR": "logs"}) == str(tmp_path / "logs" / "demo")


def test_orch_log_dir_may_start_with_a_tilde():
    assert default_log_dir("demo", {"ORCH_LOG_DIR": "~/orch-logs", "HOME": "/home/u"}) == "/home/u/orch-logs/demo"


def test_xdg_state_home_when_orch_log_dir_is_unset_or_empty():
    assert default_log_dir("demo", {"XDG_STATE_HOME": "/state", "HOME": "/home/u"}) == "/state/orch/demo"
    env = {"ORCH_LOG_DIR": "", "XDG_STATE_HOME": "/state/", "HOME": "/home/u"}
    assert default_log_dir("demo", env) == "/state/orch/demo"


@pytest.mark.parametrize("state", ["", "relative/state"])
def test_an_empty_or_relative_xdg_state_home_is_ignored(state):
    # The XDG base directory spec: a relative path there is invalid and must be ignored.
    env = {"XDG_STATE_HOME": state, "HOME": "/home/u"}
    assert default_log_dir("demo", env) == "/home/u/.local/state/orch/demo"


def test_home_is_the_last_resort():
    assert default_log_dir("demo", {"HOME": "/home/u"}) == "/home/u/.local/state/orch/demo"


def test_without_home_the_password_database_answers():
    found = default_log_dir("demo", {})
    assert os.path.isabs(found) and found.endswith(os.path.join(".local", "state", "orch", "demo"))


def test_no_mapping_means_the_process_environment(clean_env):
    assert default_log_dir("demo") == str(clean_env / ".local" / "state" / "orch" / "demo")


# -- resolved on every validated tree ------------------------------------------------


def test_a_tree_without_log_table_gets_the_default(tmp_path, clean_env):
    spec = load(write(tmp_path, 'name = "demo"\n' + CHILD))
    expected = LogSpec(dir=str(clean_env / ".local" / "state" / "orch" / "demo"),
                       max_bytes=DEFAULT_LOG_MAX_BYTES, backups=DEFAULT_LOG_BACKUPS, format=LogFormat.TEXT)
    assert spec.log == expected


def test_the_default_follows_orch_log_dir(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("ORCH_LOG_DIR", str(tmp_path / "all-logs"))
    spec = load(write(tmp_path, 'name = "demo"\n[log]\nformat = "json"\n' + CHILD))
    assert spec.log == LogSpec(dir=str(tmp_path / "all-logs" / "demo"), format=LogFormat.JSON)


def test_every_key_is_read(tmp_path, clean_env):
    text = 'name = "demo"\n[log]\ndir = "/srv/logs"\nmax_bytes = "512KB"\nbackups = 0\nformat = "json"\n'
    spec = load(write(tmp_path, text + CHILD))
    assert spec.log == LogSpec(dir="/srv/logs", max_bytes=512 * 1024, backups=0, format=LogFormat.JSON)


@pytest.mark.parametrize("written, expected", [
    ("0", 0), ('"0MB"', 0), ("1024", 1024), ('"1KB"', 1024), ('"10MB"', 10 * 1024 ** 2),
    ('"1GB"', 1024 ** 3), ('"2 gb"', 2 * 1024 ** 3), ("4096", 4096),
])
def test_max_bytes_takes_bytes_or_a_size(tmp_path, clean_env, written, expected):
    spec = load(write(tmp_path, f'name = "demo"\n[log]\nmax_bytes = {written}\n' + CHILD))
    assert spec.log.max_bytes == expected


@pytest.mark.parametrize("count", [0, 1, 1000])
def test_backups_bounds_are_allowed(tmp_path, clean_env, count):
    spec = load(write(tmp_path, f'name = "demo"\n[log]\nbackups = {count}\n' + CHILD))
    assert spec.log.backups == count


def test_a_relative_dir_is_relative_to_the_tree_file_not_the_cwd(tmp_path, clean_env, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    path = write(tmp_path, 'name = "demo"\n[log]\ndir = "../logs/./here"\n' + CHILD, "conf/tree.toml")
    assert load(os.path.relpath(path)).log.dir == str(tmp_path / "logs" / "here")


def test_dir_may_start_with_a_tilde(tmp_path, clean_env):
    spec = load(write(tmp_path, 'name = "demo"\n[log]\ndir = "~/logs"\n' + CHILD))
    assert spec.log.dir == str(clean_env / "logs")


def test_text_sent_by_a_client_resolves_against_the_path_not_the_shown_name(tmp_path, clean_env):
    # The root validates text a client read, under the name the user typed; cwd and
    # env_file resolve against the path, and so does the log dir.
    text = 'name = "demo"\n[log]\ndir = "logs"\n' + CHILD
    spec = load(str(tmp_path / "tree.toml"), text=text, shown="<stdin>")
    assert spec.log.dir == str(tmp_path / "logs")


def test_a_parsed_document_resolves_against_its_file_name(tmp_path, clean_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, smap = parse_source('name = "demo"\n[log]\ndir = "logs"\n' + CHILD, "shown.toml")
    assert validate_document(data, smap, "shown.toml").log.dir == str(tmp_path / "logs")


# -- problems --------------------------------------------------------------------------


BAD = [
    ('dir = 5', "'log.dir' must be a string (a directory relative to the tree file), got integer 5"),
    ('dir = ""', "'log.dir' must name a directory, got an empty string (use \".\" for the tree file's directory)"),
    ('dir = "a\\u0000b"', "'log.dir' must not contain a NUL character"),
    ("max_bytes = 1023", "'log.max_bytes' must be 0 (never rotate) or at least 1KB (1024 bytes), got 1023"),
    ('max_bytes = "512B"',
     "'log.max_bytes' must be 0 (never rotate) or at least 1KB (1024 bytes), got \"512B\" (512 bytes)"),
    ("max_bytes = -1", "'log.max_bytes' must be 0 (never rotate) or at least 1KB (1024 bytes), got -1"),
    ('max_bytes = "10MiB"', "'log.max_bytes' must be a size like \"512KB\", \"10MB\" or \"1GB\", got string \"10MiB\""),
    ("max_bytes = 1.5", "'log.max_bytes' must be a number of bytes or a string like \"512MB\", got float 1.5"),
    ("max_bytes = true", "'log.max_bytes' must be a number of bytes or a string like \"512MB\", got boolean true"),
    ("backups = -1", "'log.backups' must be between 0 and 1000, got -1"),
    ("backups = 1001", "'log.backups' must be between 0 and 1000, got 1001"),
    ("backups = 2.0", "'log.backups' must be a whole number of rotated files to keep, got float 2.0"),
    ('backups = "5"', "'log.backups' must be a whole number of rotated files to keep, got string \"5\""),
    ("backups = false", "'log.backups' must be a whole number of rotated files to keep, got boolean false"),
    ('format = "jsn"', "unknown log.format \"jsn\"; did you mean 'json'? (valid: \"text\", \"json\")"),
    ('format = "yaml"', "unknown log.format \"yaml\" (valid: \"text\", \"json\")"),
    ("format = 1", "'log.format' must be a string, one of \"text\", \"json\"; got integer 1"),
    ("max_byte = 5", "unknown key 'log.max_byte'; did you mean 'max_bytes'?"),
    ("rotate = 5", "unknown key 'log.rotate' (allowed in [log]: backups, dir, format, max_bytes)"),
]


@pytest.mark.parametrize("line, message", BAD, ids=[line for line, _ in BAD])
def test_each_bad_value_is_reported_at_its_line(tmp_path, line, message):
    path = write(tmp_path, f'name = "demo"\n\n[log]\n{line}\n' + CHILD)
    assert problems(path) == [f"{path}:4: (root): {message}"]


@pytest.mark.parametrize("value, shown", [('"logs"', 'string "logs"'), ("3", "integer 3"), ("[]", "array")])
def test_log_that_is_not_a_table_is_a_problem(tmp_path, value, shown):
    path = write(tmp_path, f'name = "demo"\nlog = {value}\n' + CHILD)
    assert problems(path) == [
        f"{path}:2: (root): 'log' must be a table ([log] with dir, max_bytes, backups, format), got {shown}"]


def test_an_array_of_log_tables_is_a_problem(tmp_path):
    path = write(tmp_path, 'name = "demo"\n[[log]]\ndir = "a"\n' + CHILD)
    assert problems(path) == [
        f"{path}:2: (root): 'log' must be a table ([log] with dir, max_bytes, backups, format), got array"]


def test_log_on_a_child_is_root_only(tmp_path):
    path = write(tmp_path, 'name = "demo"\n[[children]]\nname = "w"\nworker = "demo.sleep"\nlog = { dir = "x" }\n')
    assert problems(path) == [f"{path}:5: w: 'log' is root-only: set it at the top of the file, not on a child"]


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, """\
        name = "demo"
        stop_timeout = -1

        [log]
        dir = 7
        max_bytes = "1B"
        backups = 1001
        format = "xml"
        colour = true

        [[children]]
        name = "orch"
        worker = "demo.sleep"
        """)
    assert problems(path) == [
        f"{path}:2: (root): 'stop_timeout' must be >= 0 seconds, got -1",
        f"{path}:5: (root): 'log.dir' must be a string (a directory relative to the tree file), got integer 7",
        f"{path}:6: (root): 'log.max_bytes' must be 0 (never rotate) or at least 1KB (1024 bytes), "
        "got \"1B\" (1 bytes)",
        f"{path}:7: (root): 'log.backups' must be between 0 and 1000, got 1001",
        f"{path}:8: (root): unknown log.format \"xml\" (valid: \"text\", \"json\")",
        f"{path}:9: (root): unknown key 'log.colour' (allowed in [log]: backups, dir, format, max_bytes)",
        f"{path}:12: orch: the name 'orch' is reserved at the top level: orch writes its own log "
        "to orch.log; rename the node",
    ]


# -- the reserved name -----------------------------------------------------------------

RESERVED = "the name 'orch' is reserved at the top level: orch writes its own log to orch.log; rename the node"


def test_a_top_level_supervisor_named_orch_is_refused(tmp_path):
    path = write(tmp_path, """\
        name = "demo"
        [[children]]
        name = "w"
        worker = "demo.sleep"
        [[children]]
        name = "orch"
          [[children.children]]
          name = "inner"
          worker = "demo.sleep"
        """)
    assert problems(path) == [f"{path}:6: orch: {RESERVED}"]


def test_a_replicated_top_level_worker_named_orch_is_refused_too(tmp_path):
    # Its files would be orch#0.log ..., but one rule is easier to know than its exceptions.
    path = write(tmp_path, 'name = "demo"\n[[children]]\nname = "orch"\nworker = "demo.sleep"\nreplicas = 2\n')
    assert problems(path) == [f"{path}:3: orch: {RESERVED}"]


def test_orch_is_a_fine_name_below_the_top_level_and_for_the_tree(tmp_path, clean_env):
    path = write(tmp_path, """\
        name = "orch"
        [[children]]
        name = "pipeline"
          [[children.children]]
          name = "orch"
          worker = "demo.sleep"
        [[children]]
        name = "orch.log"
        worker = "demo.sleep"
        """)
    spec = load(path)
    assert [node.path for node in spec.nodes()] == ["", "pipeline", "pipeline/orch", "orch.log"]


# -- the shared size parser still serves max_memory unchanged ---------------------------


@pytest.mark.parametrize("value, message", [
    ("0", "'max_memory' must be more than 0 bytes, got 0"),
    ('"0KB"', "'max_memory' must be more than 0 bytes, got 0"),
    ('"lots"', "'max_memory' must be a size like \"512KB\", \"10MB\" or \"1GB\", got string \"lots\""),
])
def test_max_memory_messages_are_unchanged(tmp_path, value, message):
    path = write(tmp_path, f'name = "demo"\n[[children]]\nname = "w"\nworker = "demo.sleep"\nmax_memory = {value}\n')
    assert problems(path) == [f"{path}:5: w: {message}"]
