"""Pure code: no reactor, no clock, no sockets."""
