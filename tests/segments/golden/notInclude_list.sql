-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((LENGTH(p_5) > 0 AND NOT LIST_HAS_ANY(p_5, ['x'])))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((length(p_5) > 0 AND NOT hasAny(p_5, ['x'])))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((JSONB_ARRAY_LENGTH(p_5) > 0 AND NOT p_5 ?| ARRAY['x']))
