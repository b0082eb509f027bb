"""The on-chain accounts a competition's emission pays (a resource: set per deployment, from the
environment by crunch_assets/settings.py)."""

import dagster as dg


class PayoutAccounts(dg.ConfigurableResource):
    """The on-chain accounts of a competition's emission (public keys, not secrets)."""

    crunch_pubkey: str | None = None
    compute_provider_pubkey: str | None = None
    data_provider_pubkey: str | None = None
