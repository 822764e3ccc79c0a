-- duckdb
SELECT user_id, CAST(v AS TEXT) AS tag_value FROM (SELECT user_id, ARG_MAX_NULL(p_7, (event_time, event_id)) AS v FROM "p1_events" WHERE event_name = 'pay' AND event_time >= CAST('2019-12-10 16:00:00.000000' AS TIMESTAMP) AND event_time < CAST('2020-01-09 16:00:00.000000' AS TIMESTAMP) GROUP BY user_id) AS t WHERE NOT v IS NULL
-- clickhouse
SELECT user_id, CAST(v AS Nullable(String)) AS tag_value FROM (SELECT user_id, tupleElement(argMax(tuple(p_7), (event_time, event_id)), 1) AS v FROM "p1_events" WHERE event_name = 'pay' AND event_time >= toDateTime64('2019-12-10 16:00:00.000000', 6, 'UTC') AND event_time < toDateTime64('2020-01-09 16:00:00.000000', 6, 'UTC') GROUP BY user_id) AS t WHERE NOT (v IS NULL)
-- postgresql
SELECT user_id, CAST(v AS VARCHAR) AS tag_value FROM (SELECT user_id, (ARRAY_AGG(p_7 ORDER BY event_time DESC NULLS LAST, event_id DESC NULLS LAST))[1] AS v FROM "p1_events" WHERE event_name = 'pay' AND event_time >= CAST('2019-12-10 16:00:00.000000' AS TIMESTAMP) AND event_time < CAST('2020-01-09 16:00:00.000000' AS TIMESTAMP) GROUP BY user_id) AS t WHERE NOT v IS NULL
