"""The metadata database: projects, credentials, the property catalog (later: jobs, segments)."""
