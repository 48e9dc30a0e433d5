-- REINFORCE++-baseline (OpenRLHF; rl_algorithms.md §B.1): x = r - group mean, then whitened over
-- every token of the batch. numpy twin: tasks/algos/estimators.py::reinforce_pp_baseline
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index), with its grade_row
-- inputs:     view `scored_groups`, view `rollouts` (token counts); parameter $whiten_eps
-- std:        token-weighted population std of x over the batch (not per group)
-- whitening:  outcome reward, gamma = 1: each of the response's num_tokens tokens carries x, so the
--             batch mean and population variance are weighted by num_tokens;
--             A = (x - mean) / sqrt(var + $whiten_eps) (OpenRLHF: population var, eps 1e-8)
-- order:      the batch sums run in grades order (grade_row), so the result is bit-identical on every run
-- singleton:  a group with < 2 finite scores -> advantage 0, left out of the whitening statistics
-- all-equal:  x = 0; such responses stay in the whitening statistics (they are valid tokens)
-- NaN/inf:    advantage 0, left out of the whitening statistics
with centred as (
    select s.*, r.num_tokens, s.score - s.group_mean as x, (s.score is not null and s.group_n >= 2) as live
    from scored_groups s
    join rollouts r using (run_id, iteration, prompt_id, sample_index)
),
batch as (
    -- Float sums in grades order: parallel execution delivers rows in a different order each run, and
    -- an unordered sum then differs in its last bits (num_tokens sums are integers, exact in any order).
    select sum(num_tokens * x order by grade_row) / sum(num_tokens) as mu,
           sum(num_tokens * x * x order by grade_row) / sum(num_tokens) as m2
    from centred where live and num_tokens > 0
)
select grade_row, run_id, iteration, prompt_id, sample_index,
       'reinforce_pp_baseline' as estimator,
       case when not live or batch.mu is null then 0.0
            else (x - batch.mu) / sqrt(greatest(batch.m2 - batch.mu * batch.mu, 0.0) + $whiten_eps) end as advantage
from centred, batch
