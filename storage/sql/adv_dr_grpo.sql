-- Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-like training"): r - group mean.
-- numpy twin: tasks/algos/estimators.py::dr_grpo
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index)
-- inputs:     views `rollouts` and `grades`
-- group:      (run_id, iteration, prompt_id); mean over non-NaN scores
-- singleton:  a group with < 2 valid scores -> advantage 0
-- all-equal:  advantage 0
-- NaN/inf/null:   left out of the group mean, advantage 0
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
       'dr_grpo' as estimator,
       case when score is null or group_n < 2 then 0.0
            else score - group_mean end as advantage
from stats
order by prompt_id, sample_index
