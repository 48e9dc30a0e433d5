-- OPMD advantage (Kimi k1.5 online policy mirror descent; Trinity `opmd`): r_i - b with
-- b = group mean ($opmd_baseline = 'mean') or tau * log(mean_j exp(r_j / tau)) ('logavgexp').
-- numpy twin: tasks/algos/estimators.py::opmd
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups`; parameters $opmd_baseline, $opmd_tau
-- std:        not used
-- singleton:  a group with < 2 finite scores -> advantage 0
-- all-equal:  'mean' -> 0; 'logavgexp' -> 0 too (log-avg-exp of equal values is that value)
-- NaN/inf:    left out of the baseline, advantage 0
with base as (
    select *,
           $opmd_tau * ln(avg(exp(score / $opmd_tau)) over (partition by run_id, iteration, prompt_id)) as lae
    from scored_groups
)
select grade_row, run_id, iteration, prompt_id, sample_index,
       'opmd' as estimator,
       case when score is null or group_n < 2 then 0.0
            when $opmd_baseline = 'logavgexp' then score - lae
            else score - group_mean end as advantage
from base
