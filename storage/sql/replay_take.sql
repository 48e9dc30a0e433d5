-- SPO-tree replay buffer: which edges train this iteration (spo.md §2.2, App. D).
-- numpy twin: tasks/algos/spo_tree.py::replay_select (+ batch whitening as in adv_spo_chain.sql)
-- grain:      one row per live edge of the pool (run_id, added_iteration, node_id)
-- inputs:     view `pool` (the buffer left by the previous iteration + this iteration's kept edges, schema
--             REPLAY_BUFFER); parameters $iteration, $max_age, $per_question, $per_iteration (null = all),
--             $seed, $normalize ('batch' | 'micro_batch' | 'none'), $rho (probability mask; null = off),
--             $whiten_eps
-- age:        $iteration - added_iteration; an edge is live while age < $max_age, older ones are dropped
-- selection:  a fresh random priority per iteration, md5(seed/iteration/added_iteration/node_id); each question
--             offers its $per_question lowest, and the $per_iteration lowest offered are taken. Live edges
--             not taken stay in the buffer (the reference removes everything it drew, even when it
--             subsamples afterwards).
-- std:        $normalize = 'batch': train_advantage = (A - mean) / sqrt(var_pop + $whiten_eps) over the trained
--             tokens of the taken edges (prob_mask.sql's trained_tokens: p_old < $rho, or all of them when
--             $rho is null);
--             otherwise train_advantage = A (the trainer whitens micro-batches for 'micro_batch').
with live as (
    select *, $iteration - added_iteration as age,
           md5(concat($seed, '/', $iteration, '/', added_iteration, '/', node_id)) as priority
    from pool
    where $iteration - added_iteration < $max_age
),
offered as (
    select *, row_number() over (partition by prompt_id order by priority) <= $per_question as is_offered
    from live
),
ranked as (
    select *, case when is_offered then row_number() over (partition by is_offered order by priority) end as rank_
    from offered
),
decided as (
    select *, coalesce(is_offered and ($per_iteration is null or rank_ <= $per_iteration), false) as taken,
           trained_tokens(sampling_logprobs, $rho) as w  -- prob_mask.sql; p_old = the sampler's
    from ranked
),
batch as (
    select sum(w * advantage) / sum(w) as mu, sum(w * advantage * advantage) / sum(w) as m2
    from decided where taken and w > 0
)
select run_id, added_iteration, policy_version, prompt_id, node_id, depth, advantage, prefix_token_ids,
       completion_token_ids, sampling_logprobs, age, taken,
       case when $normalize = 'batch' and taken and w > 0 and batch.mu is not null
            then (advantage - batch.mu) / sqrt(greatest(batch.m2 - batch.mu * batch.mu, 0.0) + $whiten_eps)
            else advantage end as train_advantage
from decided, batch
