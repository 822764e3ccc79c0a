"""Projects, credentials, the property schema and identity keys."""
