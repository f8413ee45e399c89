"""Child process of the install power-cut test: installs a bundle and kills itself (SIGKILL)
just before step STEP (verify, write, reverify, golden, switch, audit).

``python install_writer.py HOME BUNDLE STEP GOLDEN_CACHE`` with ``HOLODIFF_HARDWARE`` naming the
test's trust store.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main() -> None:
    from device.models import ModelSlots

    home, bundle, step, cache = sys.argv[1:5]

    def cut(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    ModelSlots(Path(home), golden_cache=Path(cache), on_step=cut).install(bundle, user="svc")
    print("INSTALLED", flush=True)


if __name__ == "__main__":
    main()
