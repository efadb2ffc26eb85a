"""Run the experiments of a JSON file (a list of ``make_config`` keyword dicts) one after the other in every
process of a launch (``accelerate launch ... tests/distributed_driver.py FILE``): the device-count tests start
one launch for several runs, so the processes and their group are paid for once."""

import json
import sys

from forgetting.registry import make_config
from forgetting.running import run_experiment

if __name__ == "__main__":
    for options in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        run_experiment(make_config(**options), resolved=True)
