-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((p_4 >= CAST('2019-12-31 16:00:00.000000' AS TIMESTAMP)))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((p_4 >= toDateTime64('2019-12-31 16:00:00.000000', 6, 'UTC')))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((p_4 >= CAST('2019-12-31 16:00:00.000000' AS TIMESTAMP)))
