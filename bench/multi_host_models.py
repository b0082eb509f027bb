"""The model host of the multi-host bed (bench/multi_host.py): the model orchestrator and one gRPC
model node per model, listening on this host's address. The orchestrator is the loopback stand-in of
tests/fakes/model_orchestrator.py (its WebSocket announces the nodes, at this host's address); each
node serves one of btc_updown's quickstarter models through model-runner-client's servicer, as the
real model node does.

    python bench/multi_host_models.py --address 10.231.0.40 --port 9091 --crunch-id btc_updown --models 3
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from competitions.btc_updown.models.gaussian_density import GaussianDensity  # noqa: E402
from competitions.btc_updown.models.mean_reversion import MeanReversion  # noqa: E402
from competitions.btc_updown.models.trend_following import TrendFollowing  # noqa: E402
from tests.fakes.model_orchestrator import FakeModelNode, FakeOrchestrator  # noqa: E402

QUICKSTARTERS = (TrendFollowing, MeanReversion, GaussianDensity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="this host's address: the nodes listen and are announced there")
    parser.add_argument("--port", type=int, default=9091, help="the orchestrator's WebSocket port")
    parser.add_argument("--crunch-id", default="btc_updown")
    parser.add_argument("--models", type=int, default=3)
    arguments = parser.parse_args()
    nodes = [FakeModelNode(f"model-{index + 1}", QUICKSTARTERS[index % len(QUICKSTARTERS)](), host=arguments.address).start()
             for index in range(arguments.models)]
    orchestrator = FakeOrchestrator(crunch_id=arguments.crunch_id, host="0.0.0.0", port=arguments.port)
    orchestrator.announce(*(node.announcement() for node in nodes))
    orchestrator.start()
    print(f"orchestrator on :{arguments.port}/{arguments.crunch_id}; nodes {[(n.model_id, n.port) for n in nodes]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    orchestrator.stop()
    for node in nodes:
        node.stop()


if __name__ == "__main__":
    main()
