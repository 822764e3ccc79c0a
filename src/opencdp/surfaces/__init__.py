"""HTTP surfaces: one module per vendor API, translating its protocol to the core."""
