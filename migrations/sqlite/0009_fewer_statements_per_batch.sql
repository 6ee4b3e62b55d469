-- Kept in step with migrations/postgres/0009_fewer_statements_per_batch.sql (same version):
-- that one makes PostgreSQL's batch functions run fewer statements; SQLite has no such
-- functions, so nothing changes here.
SELECT 1;
