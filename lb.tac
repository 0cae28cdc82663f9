"""Run powerlb from a config file: ``twistd -ny lb.tac``.

Reads the YAML file named by $POWERLB_CONFIG (default: lb.yaml in the current directory),
and again on SIGHUP. Runs on powerlb's reactor (powerlb.eventloop) unless ``twistd --reactor``
chose one.
"""

import os

from twisted.application import service

import powerlb
from powerlb.config import ConfigError
from powerlb.eventloop import install_unless_chosen
from powerlb.reload import ConfigSource
from powerlb.signals import reload_on_sighup

install_unless_chosen()
source = ConfigSource(os.environ.get("POWERLB_CONFIG", "lb.yaml"))

application = service.Application("powerlb")
try:
    lb = powerlb.makeService(source.load())
except ConfigError as err:
    raise SystemExit(f"{source.path}: {err}") from None
reload_on_sighup(lb, source)
lb.setServiceParent(application)
