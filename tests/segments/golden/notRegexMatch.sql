-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((NOT REGEXP_MATCHES(p_2, '[0-9]{3}')))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((NOT match(p_2, '[0-9]{3}')))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((NOT p_2 ~ '[0-9]{3}'))
