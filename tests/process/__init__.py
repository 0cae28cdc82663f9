"""Server subprocesses: twistd powerlb and backends, on 127.0.0.1 ephemeral ports."""
