-- KL penalty in the reward (train.kl_placement = reward; rl_algorithms.md §B.4): the view `grades` as the
-- estimators see it, each finite score lowered by $kl_reward_coef * kl, where kl is the response's summed
-- per-token KL estimate to the reference model (ref_logprobs.parquet). Used only when a KL file is given,
-- so runs without the penalty never pay for the join.
-- grain:      one row per response (run_id, iteration, prompt_id, sample_index)
-- inputs:     views `grades_raw` and `kl_penalty`; kl_unmatched.sql has checked that every response has
--             exactly one non-null kl (a missing one is an error, never a penalty of 0)
-- output:     a query, not a view: DuckDB cannot bind parameters inside CREATE VIEW, so the caller
--             registers this query's relation (with $kl_reward_coef bound) as the view `grades`
select g.* replace (case when isfinite(g.score) then g.score - $kl_reward_coef * k.kl
                         else g.score end as score)
from grades_raw g
left join kl_penalty k using (run_id, iteration, prompt_id, sample_index)
