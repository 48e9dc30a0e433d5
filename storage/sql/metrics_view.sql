-- The catalog's `metrics` view: every run's metrics files under their namespaced names.
-- grain:   one row per stored (run_id, iteration, stage, name), as in the files (storage/schemas.py METRICS).
-- inputs:  `metrics_raw`, the files as written; `metric_names_raw`, storage/metric_names.py ALL_METRICS as
--          (name, legacy_name, description, legacy_regex, name_replacement), the last two set for a family of
--          metrics only (`buffer_age_<k>`: regex 'buffer_age_(\d+)', replacement 'replay/buffer_age_\1').
-- names:   runs written before namespaces store flat names (`clipfrac`): those read through the list
--          (`actor/clipfrac`) or a family's regex, and a flat name found in neither reads as `other/<name>`,
--          as storage.metric_names.qualified maps it. A name with a '/' is already namespaced and kept.
--          Families never share a name with a listed metric or with each other (tests/test_metric_names.py),
--          so each stored row matches at most one entry and the joins keep the row count.
create view metrics as
select m.* replace (
           case
               when contains(m.name, '/') then m.name
               else coalesce(n.name, regexp_replace(m.name, f.legacy_regex, f.name_replacement), 'other/' || m.name)
           end as name
       )
from metrics_raw m
left join metric_names_raw n on n.legacy_name = m.name and n.legacy_regex is null
left join metric_names_raw f on n.name is null and f.legacy_regex is not null
                              and regexp_full_match(m.name, f.legacy_regex)
