"""Run powerlb from a config file: ``twistd -ny lb.tac``.

Reads the YAML file named by $POWERLB_CONFIG (default: lb.yaml in the current directory).
"""

import os

from twisted.application import service

import powerlb
from powerlb.config import ConfigError, load_config_file

config_path = os.environ.get("POWERLB_CONFIG", "lb.yaml")

application = service.Application("powerlb")
try:
    powerlb.makeService(load_config_file(config_path)).setServiceParent(application)
except ConfigError as err:
    raise SystemExit(f"{config_path}: {err}") from None
