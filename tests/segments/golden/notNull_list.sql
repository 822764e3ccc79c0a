-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((NOT p_5 IS NULL AND LENGTH(p_5) > 0))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((NOT (p_5 IS NULL) AND length(p_5) > 0))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((NOT p_5 IS NULL AND JSONB_ARRAY_LENGTH(p_5) > 0))
