-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((LIST_HAS_ANY(p_5, ['x', 'y'])))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((hasAny(p_5, ['x', 'y'])))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((p_5 ?| ARRAY['x', 'y']))
