"""The competition-agnostic engine: asset, check, sensor and schedule factories."""

import warnings

import dagster as dg

# backfill_policy and allow_nonexistent_upstream_partitions are marked beta in Dagster 1.13; we
# rely on them deliberately (see docs/architecture.md), so their warnings are noise.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
