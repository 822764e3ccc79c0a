"""The analytic store on ClickHouse: so far, what its SQL is made of (``sql``)."""
