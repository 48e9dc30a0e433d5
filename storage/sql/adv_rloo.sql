-- RLOO advantage (Ahmadian et al. 2024): r_i - mean of the other members = n/(n-1) (r_i - mean).
-- numpy twin: tasks/algos/estimators.py::rloo
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups` (storage/sql/scored_groups.sql); no parameters
-- std:        not used
-- singleton:  n < 2 finite scores -> advantage 0 (no other member to form a baseline)
-- all-equal:  advantage 0
-- NaN/inf:    left out of n and of the baseline, advantage 0
select grade_row, run_id, iteration, prompt_id, sample_index,
       'rloo' as estimator,
       case when score is null or group_n < 2 then 0.0
            else group_n / (group_n - 1.0) * (score - group_mean) end as advantage
from scored_groups
