"""The code location tests/test_dagster_views.py serves in a real dagster-webserver: btc_updown with
the live-window test's fast spec (a cycle every 10 s, scored 20 s later), starting at the hour
$CRUNCH_VIEWS_WINDOW, its models in $CRUNCH_VIEWS_MODELS. The test process builds the same
definitions with `views_definitions`, so the UI and the runs agree on every partition."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def views_definitions(window: datetime, models_dir: Path):
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.definitions import build_competition_definitions
    from crunch_assets.rules import CallableRules
    from resources.feeds.synthetic import SyntheticFeed
    from tests.test_live_window import _fast_spec

    spec = _fast_spec(window)
    rules = CallableRules(**{**{n: getattr(RULES, n) for n in CallableRules.model_fields},
                             "input_builder": "tests.test_engine_shapes:tick_input"})
    defs = build_competition_definitions(
        spec, rules, models_dir=models_dir,
        feed=SyntheticFeed(kind="tick", granularity_seconds=0, tick_interval_seconds=5), automation_running=False,
    )
    return spec, defs


if "CRUNCH_VIEWS_WINDOW" in os.environ:
    _, defs = views_definitions(datetime.fromisoformat(os.environ["CRUNCH_VIEWS_WINDOW"]),
                                Path(os.environ["CRUNCH_VIEWS_MODELS"]))
