-- duckdb
SELECT user_id, CASE WHEN ROUND(v) = v AND ABS(v) < 1e15 THEN CAST(CAST(v AS BIGINT) AS TEXT) ELSE CAST(v AS TEXT) END AS tag_value FROM (SELECT user_id, MAX(p_6) AS v FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id) AS t WHERE NOT v IS NULL
-- clickhouse
SELECT user_id, toString(v) AS tag_value FROM (SELECT user_id, MAX(p_6) AS v FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id) AS t WHERE NOT (v IS NULL)
-- postgresql
SELECT user_id, CASE WHEN TRUNC(v) = v AND ABS(v) < 1e15 THEN CAST(CAST(v AS BIGINT) AS TEXT) ELSE CAST(v AS TEXT) END AS tag_value FROM (SELECT user_id, MAX(p_6) AS v FROM "p1_events" WHERE event_name = 'pay' GROUP BY user_id) AS t WHERE NOT v IS NULL
