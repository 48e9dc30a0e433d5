-- Shared input of every response-level estimator: each response with its group's statistics.
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with `grade_row`, its row
--             in the grades file. Rows come out in no particular order: storage/advantages.py puts each
--             estimator's output back in grades order by grade_row (the advantages file is byte-stable).
-- inputs:     view `grades` (one iteration's file, with a `grade_row` column; with a KL penalty in the
--             reward its scores are already shaped, see kl_in_reward.sql).
--             The rollouts file is not read here: estimators that need a response's seed or token count
--             join view `rollouts` themselves, so GRPO/RLOO never touch the token-id columns.
-- group:      (run_id, iteration, prompt_id)
-- score:      NaN/inf -> null (a failed grade). Not isnan(): DuckDB 2.0 folds it to false from Parquet stats.
-- statistics: over the group's non-null scores only: mean, population std (stddev_pop), count n
-- plan:       one hash aggregate that carries each group's members along as a list, then unnest.
--             A window over the responses costs more: DuckDB plans it as the same aggregate plus a hash
--             join back to every response.
create or replace temp view scored_groups as
with scored as (
    select run_id, iteration, prompt_id, sample_index, grade_row,
           case when isfinite(score) then score end as score
    from grades
),
grouped as (
    select run_id, iteration, prompt_id,
           list({'sample_index': sample_index, 'grade_row': grade_row, 'score': score}) as members,
           avg(score)        as group_mean,
           stddev_pop(score) as group_std,
           count(score)      as group_n
    from scored
    group by run_id, iteration, prompt_id
)
select run_id, iteration, prompt_id, unnest(members, recursive := true), group_mean, group_std, group_n
from grouped
