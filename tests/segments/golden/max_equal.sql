-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id HAVING MAX(p_6) = 9.0)))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id HAVING MAX(p_6) = 9.0)))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id HAVING MAX(p_6) = 9.0)))
