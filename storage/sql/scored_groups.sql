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
-- plan:       a window over the responses (DuckDB runs it as a group aggregate plus a hash join back).
--             Its row order is not fixed from run to run, so sums across groups order their inputs by
--             grade_row (adv_reinforce_pp_baseline.sql) to stay bit-identical.
create or replace temp view scored_groups as
with scored as (
    select run_id, iteration, prompt_id, sample_index, grade_row,
           case when isfinite(score) then score end as score
    from grades
)
select *,
       avg(score)        over grp as group_mean,
       stddev_pop(score) over grp as group_std,
       count(score)      over grp as group_n
from scored
window grp as (partition by run_id, iteration, prompt_id)
