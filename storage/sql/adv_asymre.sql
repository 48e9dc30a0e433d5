-- AsymRE advantage (Arnal et al. 2025; Trinity `asymre`): r_i - (group mean + $asymre_shift).
-- A negative shift puts the baseline below the behaviour policy's value, which the AsymRE paper
-- shows keeps policy improvement guaranteed. numpy twin: tasks/algos/estimators.py::asymre
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups`; parameter $asymre_shift
-- std:        not used
-- singleton:  a group with < 2 finite scores -> advantage 0
-- all-equal:  -$asymre_shift (the shift alone)
-- NaN/inf:    left out of the mean, advantage 0
select grade_row, run_id, iteration, prompt_id, sample_index,
       'asymre' as estimator,
       case when score is null or group_n < 2 then 0.0
            else score - (group_mean + $asymre_shift) end as advantage
from scored_groups
