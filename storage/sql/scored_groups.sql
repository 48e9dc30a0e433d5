-- Shared input of every response-level estimator: each response with its group's statistics.
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index); rows come out grouped,
--             in no particular order
-- inputs:     view `grades` (one iteration's file, or any set of them; with a KL penalty in the reward
--             its scores are already shaped, see kl_in_reward.sql).
--             The rollouts file is not read here: estimators that need a response's seed or token count
--             join view `rollouts` themselves, so GRPO/RLOO never touch the token-id columns.
-- group:      (run_id, iteration, prompt_id)
-- score:      NaN/inf -> null (a failed grade). Not isnan(): DuckDB 2.0 folds it to false from Parquet stats.
-- statistics: over the group's non-null scores only: mean, population std (stddev_pop), count n
-- plan:       one hash aggregate that carries each group's members along as a list, then unnest.
--             A window over the responses costs more: DuckDB plans it as the same aggregate plus a hash
--             join back to every response (bench/advantage_speed.py measures both).
create or replace temp view scored_groups as
with scored as (
    select run_id, iteration, prompt_id, sample_index,
           case when isfinite(score) then score end as score
    from grades
),
grouped as (
    select run_id, iteration, prompt_id,
           list({'sample_index': sample_index, 'score': score}) as members,
           avg(score)        as group_mean,
           stddev_pop(score) as group_std,
           count(score)      as group_n
    from scored
    group by run_id, iteration, prompt_id
)
select run_id, iteration, prompt_id, unnest(members, recursive := true), group_mean, group_std, group_n
from grouped
