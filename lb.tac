"""Run powerlb from a config file: ``twistd -ny lb.tac``.

Reads the YAML file named by $POWERLB_CONFIG (default: lb.yaml beside this file).
"""

import os

from twisted.application import service

import powerlb
from powerlb.config import load_config_file

config_path = os.environ.get("POWERLB_CONFIG") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else ".", "lb.yaml"
)

application = service.Application("powerlb")
powerlb.makeService(load_config_file(config_path)).setServiceParent(application)
