-- OPMD advantage (Kimi k1.5 online policy mirror descent; Trinity `opmd`): r_i - b with
-- b = group mean ($opmd_baseline = 'mean') or tau * log(mean_j exp(r_j / tau)) ('logavgexp').
-- numpy twin: tasks/algos/estimators.py::opmd
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups`; parameters $opmd_baseline, $opmd_tau
-- std:        not used
-- singleton:  a group with < 2 finite scores -> advantage 0
-- stable:     log-avg-exp as m + tau * ln(avg(exp((r - m) / tau))), m = the group's max score: no exp
--             overflows for small tau (the largest term is exp(0) = 1), as in the numpy twin
-- all-equal:  'mean' -> 0; 'logavgexp' -> exactly 0 (every term is exp(0), so the baseline is m = r)
-- NaN/inf:    left out of the baseline, advantage 0
with peak as (
    select *, max(score) over (partition by run_id, iteration, prompt_id) as group_max
    from scored_groups
),
base as (
    select *,
           group_max + $opmd_tau * ln(avg(exp((score - group_max) / $opmd_tau))
                                      over (partition by run_id, iteration, prompt_id)) as lae
    from peak
)
select grade_row, run_id, iteration, prompt_id, sample_index,
       'opmd' as estimator,
       case when score is null or group_n < 2 then 0.0
            when $opmd_baseline = 'logavgexp' then score - lae
            else score - group_mean end as advantage
from base
