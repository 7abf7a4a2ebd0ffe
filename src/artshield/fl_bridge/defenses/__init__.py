"""Server-side aggregation rules on stacked client deltas (see :mod:`.base` for the contract)."""
