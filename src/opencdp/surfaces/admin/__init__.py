"""The native admin API under ``/admin/v1/``: projects, credentials, schema, profiles,
segments, collections, imports, exports and health. One module per resource; ``app`` builds
the application around them."""

from opencdp.surfaces.admin.app import build

__all__ = ["build"]
