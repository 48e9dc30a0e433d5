-- KL penalty in the reward: the responses of the grades file that do not have exactly one KL value. Run
-- before kl_in_reward.sql, which would otherwise give a missing response no penalty without a word and
-- count a duplicated one twice; storage/advantages.py turns any row here into an error naming it.
-- grain:      one row per such response, in grades order, at most 3 (the error names these), each with
--             the total number of such responses (n_bad)
-- inputs:     views `grades_raw` (with grade_row) and `kl_penalty`
-- kl_rows:    non-null kl values for the response: 0 = missing (or null), 2+ = duplicated
with matched as (
    select g.grade_row, g.run_id, g.iteration, g.prompt_id, g.sample_index, count(k.kl) as kl_rows
    from grades_raw g
    left join kl_penalty k using (run_id, iteration, prompt_id, sample_index)
    group by g.grade_row, g.run_id, g.iteration, g.prompt_id, g.sample_index
)
select run_id, iteration, prompt_id, sample_index, kl_rows, count(*) over () as n_bad
from matched
where kl_rows <> 1
order by grade_row
limit 3
