-- REC advantage (Yao et al. 2025 "Group-relative REINFORCE is secretly off-policy", Trinity `rec`)
-- with the RED-Drop balance option. numpy twin: tasks/algos/estimators.py::rec
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups`, view `rollouts` (seeds); parameters $eps, $rec_std_normalize, $rec_drop
-- RED-Drop:   $rec_drop = 'balance': negatives are score < group mean - 1e-9 * max(1, |group mean|), positives
--             the other finite scores. The tolerance absorbs the mean's rounding (mean of 0.1, 0.2, 0.3 is
--             0.20000000000000004, so 0.2 is not a negative); numpy twin: estimators.RED_DROP_TOL, same rule.
--             If a group has more negatives than positives, the surplus negatives with the smallest `seed`
--             (the per-sample seed, a deterministic pseudo-random order) are dropped: advantage 0, out of
--             the statistics.
-- statistics: mean and population std over the kept finite scores; A = score - mean_kept,
--             divided by (std_kept + $eps) when $rec_std_normalize
-- singleton:  fewer than 2 kept finite scores -> advantage 0
-- all-equal:  advantage 0
-- NaN/inf:    advantage 0, never kept
with signed as (
    select s.*, r.seed, s.score < s.group_mean - 1e-9 * greatest(1.0, abs(s.group_mean)) as below
    from scored_groups s
    join rollouts r using (run_id, iteration, prompt_id, sample_index)
),
labelled as (  -- a null score is neither
    select * exclude (below), coalesce(not below, false) as is_pos, coalesce(below, false) as is_neg
    from signed
),
ranked as (
    select *,
           count(*) filter (where is_neg) over grp - count(*) filter (where is_pos) over grp as surplus,
           row_number() over (partition by run_id, iteration, prompt_id, is_neg order by seed, sample_index) as neg_rank
    from labelled
    window grp as (partition by run_id, iteration, prompt_id)
),
kept as (
    select *, score is not null and not ($rec_drop = 'balance' and is_neg and neg_rank <= surplus) as keep
    from ranked
),
stats as (
    select *,
           avg(score) filter (where keep) over grp as kept_mean,
           stddev_pop(score) filter (where keep) over grp as kept_std,
           count(*) filter (where keep) over grp as kept_n
    from kept
    window grp as (partition by run_id, iteration, prompt_id)
)
select grade_row, run_id, iteration, prompt_id, sample_index,
       'rec' as estimator,
       case when not keep or kept_n < 2 then 0.0
            when $rec_std_normalize then (score - kept_mean) / (kept_std + $eps)
            else score - kept_mean end as advantage
from stats
