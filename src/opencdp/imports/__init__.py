"""Bulk imports: uploaded files read in batches, checked, and written to the store."""
