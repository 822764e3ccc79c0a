-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((p_2 = 'a''b'))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((p_2 = 'a''b'))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((p_2 = 'a''b'))
