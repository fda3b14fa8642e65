"""root: the `orch up` process (guardian, root supervisor, state table, orphan repair,
control socket server and client, live OS view, tree view rows). Imports engine and below."""
