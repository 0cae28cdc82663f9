"""In the test process: MemoryReactor or task.Clock, or real sockets on 127.0.0.1."""
