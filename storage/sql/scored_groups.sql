-- Shared input of every response-level estimator: each response with its group's statistics.
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index)
-- inputs:     views `rollouts`, `grades` and `kl_penalty` (one iteration's files, or any set of them)
-- group:      (run_id, iteration, prompt_id)
-- score:      NaN/inf -> null (a failed grade). Not isnan(): DuckDB 2.0 folds it to false from Parquet stats.
--             With the KL penalty in the reward (train.kl_placement = reward), score - $kl_reward_coef * kl,
--             kl = the response's summed per-token KL estimate to the reference model (rl_algorithms.md §B.4).
-- statistics: over the group's non-null scores only: mean, population std (stddev_pop), count n
create or replace temp view scored_groups as
with scored as (
    select r.run_id, r.iteration, r.prompt_id, r.sample_index, r.seed, r.num_tokens,
           case when isfinite(g.score) then g.score - $kl_reward_coef * coalesce(k.kl, 0.0) end as score
    from rollouts r
    join grades g using (run_id, iteration, prompt_id, sample_index)
    left join kl_penalty k using (run_id, iteration, prompt_id, sample_index)
)
select *,
       avg(score)        over grp as group_mean,
       stddev_pop(score) over grp as group_std,
       count(score)      over grp as group_n
from scored
window grp as (partition by run_id, iteration, prompt_id)
