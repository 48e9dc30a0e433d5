"""`segflow` commands that draw a run's artifacts in the terminal: tree (SPO-tree), segments (SPO-chain).

flows/cli.py adds them to `segflow`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_common import fail, run_dir

# flows/cli.py adds these commands to `segflow`, after its own.
app = typer.Typer()


def _iterations_with(root: Path, name: str) -> list[int]:
    """Iterations of run directory `root` that hold the artifact file `name`, ascending."""
    return sorted(int(p.parent.name) for p in (root / "iterations").glob(f"*/{name}"))


def _decoder(root: Path):
    """Token ids -> text with the run's tokenizer (any local checkpoint holds it); None when there is none."""
    dirs = sorted((root / "checkpoints").glob("*")) + [root / "models" / "warm_start"]
    for d in dirs:
        if (d / "tokenizer_config.json").exists():
            from tasks.tokens import load_tokenizer

            tok = load_tokenizer(str(d))
            return lambda ids: tok.decode(ids, skip_special_tokens=True)
    return None


@app.command()
def tree(
    run: str = typer.Argument(..., help="Run id (under --runs-dir) or run directory."),
    iteration: int = typer.Option(..., "--iteration", "-k", help="Iteration whose trees to show."),
    question: str | None = typer.Option(None, "--question", "-q", help="Prompt id; omitted = list the questions."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    text: bool = typer.Option(True, "--text/--no-text", help="Show each segment's decoded text."),
) -> None:
    """Draw an SPO-tree: node values V, edge advantages A (* = trained), leaf grades."""
    from storage.layout import RunLayout
    from tasks.tree_view import read_tree, tree_lines

    root = run_dir(run, runs_dir)
    layout = RunLayout(runs_dir=str(root.parent), run_id=root.name)
    nodes, adv = layout.tree_nodes(iteration), layout.tree_advantages(iteration)
    if not nodes.exists() or not adv.exists():
        done = _iterations_with(root, "tree_advantages.parquet")
        fail(
            f"{root.name}: iteration {iteration} has no SPO-tree (tree_nodes + tree_advantages); "
            f"iterations with trees: {done or 'none (not an spo_tree run?)'}"
        )
    rows = read_tree(nodes, adv)
    if question is None:
        for q in sorted({r["prompt_id"] for r in rows}):
            r = next(x for x in rows if x["node_id"] == q)
            print(f"{q}  V={r['value']:.2f}  nodes={sum(x['prompt_id'] == q for x in rows) - 1}")
        return
    try:
        lines = tree_lines(rows, question, _decoder(root) if text else None)
    except KeyError as e:
        fail(str(e.args[0]))
    print("\n".join(lines))


@app.command()
def segments(
    run: str = typer.Argument(..., help="Run id (under --runs-dir) or run directory of an spo_chain run."),
    iteration: int | None = typer.Option(None, "--iteration", "-k", help="Iteration to show; default the last one."),
    n: int = typer.Option(5, "--n", min=1, help="Responses to draw (several segments, correct and wrong mixed)."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Only this prompt id's responses."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    text: bool = typer.Option(True, "--text/--no-text", help="Show the response with segments and cutpoints."),
) -> None:
    """Draw SPO-chain segments: boundaries (‖), cutpoints (⟦ ⟧), values V and segment advantages A."""
    from rich.console import Console
    from rich.markup import escape

    from storage.layout import RunLayout
    from tasks.segment_view import pick, read_segment_views, segment_lines

    root = run_dir(run, runs_dir)
    done = _iterations_with(root, "segment_advantages.parquet")
    if not done:
        fail(
            f"{root.name}: no iteration has SPO-chain segments (segments + segment_advantages); not an "
            "spo_chain run, or its first iteration has not finished"
        )
    k = done[-1] if iteration is None else iteration
    if k not in done:
        fail(f"{root.name}: iteration {k} has no SPO-chain segments; iterations with segments: {done}")
    views = read_segment_views(RunLayout(runs_dir=str(root.parent), run_id=root.name), k)
    if prompt is not None:
        views = [v for v in views if v["prompt_id"] == prompt]
        if not views:
            fail(f"{root.name}: no response to prompt {prompt!r} in iteration {k}")
    console = Console(highlight=False)
    console.print(
        f"{root.name}, iteration {k}: {len(views)} responses; ‖ separates segments, ⟦ ⟧ marks cutpoints", markup=False
    )
    marks = {"cut": lambda t: f"[bold reverse]⟦{escape(t)}⟧[/]", "plain": escape, "sep": "[dim] ‖ [/]"}
    decode = _decoder(root) if text else None
    for v in views if prompt is not None else pick(views, n):
        lines = segment_lines(v, decode, **marks)
        console.print()
        for i, line in enumerate(lines):
            console.print(line, markup=text and i == len(lines) - 1, soft_wrap=True)
