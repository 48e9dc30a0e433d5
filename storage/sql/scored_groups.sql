-- Shared input of every response-level estimator: each response with its group's statistics.
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index)
-- inputs:     views `rollouts` and `grades` (one iteration's files, or any set of them)
-- group:      (run_id, iteration, prompt_id)
-- score:      NaN/inf -> null (a failed grade). Not isnan(): DuckDB 2.0 folds it to false from Parquet stats.
-- statistics: over the group's non-null scores only: mean, population std (stddev_pop), count n
create or replace temp view scored_groups as
with scored as (
    select r.run_id, r.iteration, r.prompt_id, r.sample_index,
           case when isfinite(g.score) then g.score end as score
    from rollouts r
    join grades g using (run_id, iteration, prompt_id, sample_index)
)
select *,
       avg(score)        over grp as group_mean,
       stddev_pop(score) over grp as group_std,
       count(score)      over grp as group_n
from scored
window grp as (partition by run_id, iteration, prompt_id)
