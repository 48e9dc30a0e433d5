-- RLOO advantage (Ahmadian et al. 2024): r_i - mean of the other group members = n/(n-1) (r_i - mean).
-- numpy twin: tasks/algos/estimators.py::rloo
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index)
-- inputs:     views `rollouts` and `grades`
-- group:      (run_id, iteration, prompt_id); n = number of non-NaN scores
-- singleton:  n < 2 -> advantage 0 (no other member to form a baseline)
-- all-equal:  advantage 0
-- NaN/inf/null:   left out of n and of the baseline, advantage 0
with scored as (
    select r.run_id, r.iteration, r.prompt_id, r.sample_index,
           case when isfinite(g.score) then g.score end as score  -- NaN/inf -> null. Not isnan(): DuckDB 2.0 folds it to false from Parquet stats
    from rollouts r
    join grades g using (run_id, iteration, prompt_id, sample_index)
),
stats as (
    select *,
           avg(score)   over grp as group_mean,
           count(score) over grp as group_n
    from scored
    window grp as (partition by run_id, iteration, prompt_id)
)
select run_id, iteration, prompt_id, sample_index,
       'rloo' as estimator,
       case when score is null or group_n < 2 then 0.0
            else group_n / (group_n - 1.0) * (score - group_mean) end as advantage
from stats
order by prompt_id, sample_index
