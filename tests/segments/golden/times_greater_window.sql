-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' AND event_time >= CAST('2020-01-02 16:00:00.000000' AS TIMESTAMP) AND event_time < CAST('2020-01-09 16:00:00.000000' AS TIMESTAMP) GROUP BY user_id HAVING COUNT(*) > 4.0)))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' AND event_time >= toDateTime64('2020-01-02 16:00:00.000000', 6, 'UTC') AND event_time < toDateTime64('2020-01-09 16:00:00.000000', 6, 'UTC') GROUP BY user_id HAVING COUNT(*) > 4.0)))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' AND event_time >= CAST('2020-01-02 16:00:00.000000' AS TIMESTAMP) AND event_time < CAST('2020-01-09 16:00:00.000000' AS TIMESTAMP) GROUP BY user_id HAVING COUNT(*) > 4.0)))
