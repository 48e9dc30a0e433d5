-- GRPO advantage (Shao et al. 2024). numpy twin: tasks/algos/estimators.py::grpo
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index)
-- inputs:     views `rollouts` and `grades` (one iteration's files); parameter $eps
-- group:      (run_id, iteration, prompt_id)
-- std:        population (stddev_pop), over the group's non-NaN scores; $eps added to the std
-- singleton:  a group with < 2 valid scores -> advantage 0
-- all-equal:  std = 0 -> (r - mean) = 0 -> advantage 0
-- NaN/inf/null:   a failed grade is left out of the group stats and gets advantage 0
with scored as (
    select r.run_id, r.iteration, r.prompt_id, r.sample_index,
           case when isfinite(g.score) then g.score end as score  -- NaN/inf -> null. Not isnan(): DuckDB 2.0 folds it to false from Parquet stats
    from rollouts r
    join grades g using (run_id, iteration, prompt_id, sample_index)
),
stats as (
    select *,
           avg(score)        over grp as group_mean,
           stddev_pop(score) over grp as group_std,
           count(score)      over grp as group_n
    from scored
    window grp as (partition by run_id, iteration, prompt_id)
)
select run_id, iteration, prompt_id, sample_index,
       'grpo' as estimator,
       case when score is null or group_n < 2 then 0.0
            else (score - group_mean) / (group_std + $eps) end as advantage
from stats
order by prompt_id, sample_index
