-- SPO-tree node values and edge advantages (Guo et al. 2025, spo.md §2.2).
-- numpy twin: tasks/algos/spo_tree.py::node_values, ::edge_advantages, ::kept_edges
-- grain:      one row per tree node (run_id, iteration, node_id), roots included (advantage null)
-- inputs:     view `nodes` (tree_nodes.parquet of the tree_rollouts stage); parameters
--             $value_mode ('leaves' | 'children'), $sibling_std (bool), $eps, $drop_zero (bool)
-- value:      'leaves': V(node) = mean reward of the leaves below it (a leaf is its own reward).
--             'children' (the reference): mean of the children's values, recursively. Both are a weighted
--             mean of leaf rewards, with weight 1 ('leaves') or prod over the path of 1/children ('children',
--             counting the children that have a value), so one recursive walk from every leaf up to its
--             ancestors computes either.
-- advantage:  A(n) = V(n) - V(parent); with $sibling_std divided by (population std of the values of n's
--             siblings, n included, + $eps) (the reference's adv_method 'grpo').
-- zero:       |V(n) - V(parent)| <= 1e-9 gives A = 0 exactly, decided before the division (equal means summed
--             in another order differ by ~1e-17, which a sibling std of 0 would blow up to ~1e-9);
--             numpy twin: spo_tree.ZERO_ADVANTAGE
-- kept:       non-root, finite advantage, and A <> 0 when $drop_zero (the reference drops A = 0 edges).
-- singleton:  a single child has advantage V(child) - V(parent) = 0 in 'children' mode (dropped)
-- NaN/inf:    leaves without a finite score are left out of every mean; a node with none below has
--             value NaN, and its edge is not kept
with recursive reach (leaf_id, node_id) as (  -- every (finitely scored leaf, node on its path to the root)
    select node_id, node_id from nodes where is_leaf and isfinite(score)
    union all
    select r.leaf_id, n.parent_id from reach r join nodes n on n.node_id = r.node_id where n.parent_id is not null
),
fanout as (  -- children that have a value (a finitely scored leaf below): those a 'children' mean averages
    select n.parent_id as node_id, count(*) as n_children
    from nodes n where n.parent_id is not null and n.node_id in (select node_id from reach)
    group by n.parent_id
),
paths (leaf_id, node_id, w, score) as (
    select node_id, node_id, 1.0::double, score from nodes where is_leaf and isfinite(score)
    union all
    select p.leaf_id, n.parent_id, p.w / f.n_children, p.score
    from paths p
    join nodes n on n.node_id = p.node_id
    join fanout f on f.node_id = n.parent_id
),
node_value as (
    select node_id,
           case when $value_mode = 'leaves' then avg(score) else sum(w * score) / sum(w) end as value,
           count(*) as n_leaves
    from paths group by node_id
),
valued as (
    select n.run_id, n.iteration, n.prompt_id, n.node_id, n.parent_id, n.depth, n.is_leaf,
           coalesce(v.n_leaves, 0) as n_leaves, coalesce(v.value, 'nan'::double) as value
    from nodes n left join node_value v using (node_id)
),
edges as (
    select c.*, p.value as parent_value,
           -- ordered window: the siblings are summed in one order, so sibling_std is the same bits every time
           case when c.parent_id is not null then stddev_pop(case when isfinite(c.value) then c.value end)
                over (partition by c.parent_id order by c.node_id
                      rows between unbounded preceding and unbounded following) end as sibling_std
    from valued c left join valued p on p.node_id = c.parent_id
),
scored as (
    select *,
           case when parent_id is null then null
                when abs(value - parent_value) <= 1e-9 then 0.0
                when $sibling_std then (value - parent_value) / (sibling_std + $eps)
                else value - parent_value end as advantage
    from edges
)
select run_id, iteration, prompt_id, node_id, parent_id, depth, is_leaf, n_leaves, value, parent_value,
       sibling_std, advantage,
       coalesce(parent_id is not null and isfinite(advantage)
                and (not $drop_zero or advantage <> 0.0), false) as kept
from scored
order by prompt_id, node_id  -- a byte-stable file (segflow advantages reproduces it exactly)
