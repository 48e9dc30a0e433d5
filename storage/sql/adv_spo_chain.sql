-- SPO-chain segment advantages (Guo et al. 2025, spo.md §2.1, §3.3): A_k = V(end of segment k) - V(start of k).
-- numpy twin: tasks/algos/spo_chain.py::segment_advantages (+ ::whiten for $normalize = 'batch')
-- grain:      one row per segment (run_id, iteration, prompt_id, prefix_id, sample_index, segment_index):
--             a response's segments (prefix_id null) and, with spo.mc_train, one per trained Monte Carlo
--             continuation (prefix_id its boundary prefix, V(prefix) -> its reward). Both whiten together.
-- inputs:     view `segments` (segments.parquet of the spo_values stage: token span, cutpoints, V at both ends);
--             parameters $normalize ('none' | 'batch' | 'micro_batch'), $rho (prob mask; null = off), $whiten_eps
-- unknown V:  a NaN/null start or end value (no finite MC grade, or the reference's missing V(prompt)) -> 0
-- std:        $normalize = 'batch': (A - mean) / sqrt(var_pop + $whiten_eps) over the trained tokens of the
--             whole iteration: a segment weighs its trained tokens (prob_mask.sql): its cutpoints, p < spo.rho =
--             $rho (Config), with the mask on, its length otherwise. Segments that train none keep their raw value.
--             'micro_batch' (the reference's whitening) and 'none' leave A raw here; the trainer whitens
--             micro-batches.
-- singleton:  not applicable (values come from Monte Carlo, not from groups)
-- all-equal:  segments whose values are all equal get A = 0 (before whitening)
-- NaN/inf:    as unknown V
with raw as (
    select *,
           case when isfinite(v_start) and isfinite(v_end) then v_end - v_start else 0.0 end as a,
           case when $rho is null then end_token - start_token else num_cutpoints end as w
    from segments
),
batch as (
    select sum(w * a) / sum(w) as mu, sum(w * a * a) / sum(w) as m2 from raw where w > 0
)
select run_id, iteration, prompt_id, sample_index, prefix_id, segment_index, start_token, end_token, num_cutpoints,
       v_start, v_end,
       case when $normalize = 'batch' and w > 0 and batch.mu is not null
            then (a - batch.mu) / sqrt(greatest(batch.m2 - batch.mu * batch.mu, 0.0) + $whiten_eps)
            else a end as advantage
from raw, batch
order by prompt_id, prefix_id nulls first, sample_index, segment_index
