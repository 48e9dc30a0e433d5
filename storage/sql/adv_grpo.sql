-- GRPO advantage (Shao et al. 2024). numpy twin: tasks/algos/estimators.py::grpo
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups` (storage/sql/scored_groups.sql); parameter $eps
-- std:        population (stddev_pop) over the group's finite scores; $eps added to the std
-- singleton:  a group with < 2 finite scores -> advantage 0
-- all-equal:  std = 0 -> (r - mean) = 0 -> advantage 0
-- NaN/inf:    a failed grade is left out of the group stats and gets advantage 0
select grade_row, run_id, iteration, prompt_id, sample_index,
       'grpo' as estimator,
       case when score is null or group_n < 2 then 0.0
            else (score - group_mean) / (group_std + $eps) end as advantage
from scored_groups
