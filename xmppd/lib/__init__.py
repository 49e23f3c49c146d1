"""Pure protocol helpers shared by several modules (no hooks, no server state)."""
