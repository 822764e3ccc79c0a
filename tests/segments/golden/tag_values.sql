-- duckdb
SELECT user_id, tag_value FROM (SELECT user_id, CASE WHEN ((p_1 >= 5.0)) THEN 'gold' WHEN ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id HAVING COUNT(*) > 2.0))) THEN 'silver' END AS tag_value FROM "p1_profiles") AS t WHERE NOT tag_value IS NULL
-- clickhouse
SELECT user_id, tag_value FROM (SELECT user_id, CASE WHEN ((p_1 >= 5.0)) THEN 'gold' WHEN ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id HAVING COUNT(*) > 2.0))) THEN 'silver' END AS tag_value FROM "p1_profiles") AS t WHERE NOT (tag_value IS NULL)
-- postgresql
SELECT user_id, tag_value FROM (SELECT user_id, CASE WHEN ((p_1 >= 5.0)) THEN 'gold' WHEN ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id HAVING COUNT(*) > 2.0))) THEN 'silver' END AS tag_value FROM "p1_profiles") AS t WHERE NOT tag_value IS NULL
