"""Tenants' limits and budgets (`[quota]`): rules, prices, the counters' store, and the limiter
that reserves before a call reaches its provider and settles after (docs/configuration.md#quota)."""
