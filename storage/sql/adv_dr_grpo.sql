-- Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-like training"): r - group mean.
-- numpy twin: tasks/algos/estimators.py::dr_grpo
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups` (storage/sql/scored_groups.sql); no parameters (no std division)
-- std:        not used
-- singleton:  a group with < 2 finite scores -> advantage 0
-- all-equal:  advantage 0
-- NaN/inf:    left out of the group mean, advantage 0
select grade_row, run_id, iteration, prompt_id, sample_index,
       'dr_grpo' as estimator,
       case when score is null or group_n < 2 then 0.0
            else score - group_mean end as advantage
from scored_groups
