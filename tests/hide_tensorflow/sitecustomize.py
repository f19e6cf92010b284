"""Put this folder on PYTHONPATH to run Python as if TensorFlow were not installed.

Python imports `sitecustomize` at start-up. The finder below makes every
import of tensorflow (and tensorboard, which Keras' TensorBoard callback
reaches through it) fail as an uninstalled package does, without putting
None into sys.modules, which Keras would take for a loaded TensorFlow. Used
by the tests of the GPU machine's path (docs/gpu.md), which has no TensorFlow.

`REFUSED` lists every import it refused, so a test can tell "never tried to
import TensorFlow" from "tried, and carried on without it" (`import sitecustomize`).
"""

import importlib.abc
import sys

REFUSED: list[str] = []


class HideTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorboard"):
            REFUSED.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, HideTensorFlow())
