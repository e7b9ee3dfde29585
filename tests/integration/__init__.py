"""Integration tests: real sockets, in-process nodes on port 0 and ``wsgate`` subprocesses."""
