-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((p_4 BETWEEN CAST('2019-12-31 16:00:00.000000' AS TIMESTAMP) AND CAST('2020-01-01 16:00:00.000000' AS TIMESTAMP)))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((p_4 BETWEEN toDateTime64('2019-12-31 16:00:00.000000', 6, 'UTC') AND toDateTime64('2020-01-01 16:00:00.000000', 6, 'UTC')))
