-- Which tokens train: SPO's probability mask (spo.md §3.2), the one SQL form of the rule.
-- python twin: tasks/algos/prob_mask.py::trains, ::trained_count (tests/test_prob_mask.py: they agree)
-- rule:       a token trains iff p_old < rho (p_old = exp of its old log-prob); rho null = no mask, every
--             token trains; p_old = rho does not train. Callers pass rho as a bound parameter ($rho).
-- macros:     trains(p, rho) -> bool; trained_tokens(logprobs, rho) -> how many of a log-prob list train.
--             Temporary, so each scratch cursor that runs a file using them creates its own.
create or replace temp macro trains(p, rho) as rho is null or p < rho;
create or replace temp macro trained_tokens(logprobs, rho) as len(list_filter(logprobs, lambda x: trains(exp(x), rho)));
