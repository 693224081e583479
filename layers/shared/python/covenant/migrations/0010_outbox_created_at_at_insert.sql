-- An outbox row's created_at was now(), the start of its transaction. A transaction that began
-- first but wrote its event second (it waited for the aggregate's row lock) gave the later
-- event (higher seq) the older created_at, and the sweep's minimum age, checked row by row,
-- could publish it before the earlier one. The time of the insert keeps created_at in seq
-- order for the events of one aggregate.
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
