-- duckdb
SELECT user_id, CAST(NULL AS TEXT) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' AND ((STRPOS(p_7, 'and') > 0) OR (LENGTH(p_9) > 0 AND NOT LIST_HAS_ANY(p_9, ['gift']))) GROUP BY user_id HAVING COUNT(*) > 0.0)))
-- clickhouse
SELECT user_id, CAST(NULL AS Nullable(String)) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' AND ((POSITION(p_7, 'and') > 0) OR (length(p_9) > 0 AND NOT hasAny(p_9, ['gift']))) GROUP BY user_id HAVING COUNT(*) > 0.0)))
-- postgresql
SELECT user_id, CAST(NULL AS VARCHAR) AS tag_value FROM "p1_profiles" WHERE ((user_id IN (SELECT user_id FROM "p1_events" WHERE event_name = 'pay' AND ((POSITION('and' IN p_7) > 0) OR (JSONB_ARRAY_LENGTH(p_9) > 0 AND NOT p_9 ?| ARRAY['gift'])) GROUP BY user_id HAVING COUNT(*) > 0.0)))
