"""Independent RL probe on the embedded default: can plain policy gradient lift held-out accuracy here?

    .venv/bin/python bench/rl_probe.py [--variants grpo:1e-4 grpo:1e-4:0.3 pos:1e-4:0.6 sft:1e-4 ...]
                                       [--starts default 1e-3:1.0] [--seeds 0 1 2]
                                       [--iterations 100] [--prompts 32] [--samples 8] [--every 20]

A cross-check of the pipeline's learning results that shares none of its sampling, loss or training
code: the same warm start as the `warm_start` stage (tiny model, character tokenizer, `tasks.trainer.sft`,
350 steps; `--starts` compares warm-start lr schedules, `lr:min_lr_ratio`), then a loop written here: Hugging Face
`generate` sampling, the task's
grader, group-normalised advantages, and one on-policy AdamW step per iteration on the token-mean
of -A * log p. Variants are `mode:lr[:temperature]` (sampling temperature of the training rollouts,
default 1; the loss takes log-probs at the same temperature, as the pipeline's trainer does):

  * grpo: advantages (r - group mean) / (group std + 1e-6);
  * pos:  the positive part only (training on the model's own correct answers, RAFT-style);
  * sft:  the prompts' worked solutions with advantage 1 (continued supervised training, the yardstick).

Every variant of a (warm start, seed) starts from the same weights and sees the same prompts. Reported: greedy
held-out accuracy (256 problems) along the way, sampled accuracy on the held-out set at temperature 1
(4 samples per problem) at the start and the end, and the share of the variant's correct training
samples whose worked steps are wrong (`frac_ok_wrong_steps`, tasks/algos/arith.steps_match).
Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import spread, write_section  # noqa: E402

from configs.schema import Config  # noqa: E402
from tasks import tiny_model  # noqa: E402
from tasks.algos.arith import generate, split, steps_match  # noqa: E402
from tasks.algos.grading import RewardScheme, grade_numeric  # noqa: E402
from tasks.sft import sft  # noqa: E402
from tasks.tokens import encode_prompt, render_prompt  # noqa: E402

SCHEME = RewardScheme()


class Probe:
    def __init__(self, seed: int, threads: int, warm_start: dict | None = None):
        cfg = Config()
        cfg = cfg.model_copy(update={"warm_start": cfg.warm_start.model_copy(update=warm_start or {})})
        self.warm_start = cfg.warm_start
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        self.tok = tiny_model.build_tokenizer()
        self.eos, self.pad = self.tok.eos_token_id, self.tok.pad_token_id
        a = cfg.data.arith
        problems = generate(a.n_train + a.n_test, a.min_terms, a.max_terms, a.max_operand, a.seed)
        train, test = split(problems, a.n_test)
        self.train = [self._item(p, cfg) for p in train]
        self.test = [self._item(p, cfg) for p in test]
        self.model = tiny_model.build_model(cfg.model.tiny, len(self.tok), seed=seed)
        t0 = time.perf_counter()
        sft(
            self.model,
            [(p["ids"], p["solution_ids"]) for p in self.train],
            steps=cfg.warm_start.steps,
            batch_size=cfg.warm_start.batch_size,
            lr=cfg.warm_start.lr,
            min_lr_ratio=cfg.warm_start.min_lr_ratio,
            seed=seed,
            pad_id=self.pad,
            device=torch.device("cpu"),
        )
        self.sft_seconds = time.perf_counter() - t0
        self.start = copy.deepcopy(self.model.state_dict())

    def _item(self, p, cfg: Config) -> dict:
        # prompt ids as prepare_dataset builds them, worked-solution ids as the warm_start stage does
        ids = encode_prompt(render_prompt(p.question, cfg.data, self.tok), cfg.data, self.tok)
        return {
            "ids": ids,
            "reference": str(p.answer),
            "solution": p.solution,
            "solution_ids": self.tok(p.solution, add_special_tokens=False)["input_ids"] + [self.eos],
        }

    def sample(self, prompts: list[dict], n: int, greedy: bool, temperature: float = 1.0) -> list[list[int]]:
        ids = [p["ids"] for p in prompts for _ in range(n)]
        width = max(map(len, ids))
        inp = torch.tensor([[self.pad] * (width - len(x)) + x for x in ids])
        att = (inp != self.pad).long()
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=inp,
                attention_mask=att,
                do_sample=not greedy,
                temperature=temperature,
                top_p=1.0,
                max_new_tokens=48,
                pad_token_id=self.pad,
                eos_token_id=self.eos,
            )
        completions = []
        for row in out[:, width:].tolist():
            c: list[int] = []
            for t in row:
                if t == self.pad:
                    break
                c.append(t)
                if t == self.eos:
                    break
            completions.append(c)
        return completions

    def grade(self, prompts: list[dict], n: int, completions: list[list[int]]) -> tuple[np.ndarray, list[bool]]:
        scores, steps_ok = [], []
        for i, c in enumerate(completions):
            p = prompts[i // n]
            text = self.tok.decode(c, skip_special_tokens=True)
            g = grade_numeric(text, p["reference"], "stop" if c and c[-1] == self.eos else "length", SCHEME)
            scores.append(g.score)
            steps_ok.append(g.status != "ok" or steps_match(text, p["solution"]))
        return np.array(scores), steps_ok

    def accuracy(self, n: int, greedy: bool) -> float:
        return float(self.grade(self.test, n, self.sample(self.test, n, greedy))[0].mean())

    def run(
        self,
        mode: str,
        lr: float,
        temperature: float,
        iterations: int,
        prompts: int,
        samples: int,
        every: int,
        seed: int,
    ) -> dict:
        self.model.load_state_dict(self.start)
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        curve = [self.accuracy(1, greedy=True)]
        sampled0 = self.accuracy(4, greedy=False)
        ok, lucky = 0, 0
        for it in range(1, iterations + 1):
            batch = [self.train[i] for i in rng.choice(len(self.train), prompts, replace=False)]
            if mode == "sft":
                ids, comps, adv = [p["ids"] for p in batch], [p["solution_ids"] for p in batch], np.ones(len(batch))
            else:
                comps = self.sample(batch, samples, greedy=False, temperature=temperature)
                ids = [p["ids"] for p in batch for _ in range(samples)]
                r, steps_ok = self.grade(batch, samples, comps)
                ok += int(r.sum())
                lucky += sum(1 for s, good in zip(r, steps_ok) if s == 1 and not good)
                g = r.reshape(prompts, samples)
                adv = ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-6)).reshape(-1)
                if mode == "pos":
                    adv = np.maximum(adv, 0.0)
            self.step(opt, ids, comps, adv, 1.0 if mode == "sft" else temperature)
            if it % every == 0:
                curve.append(self.accuracy(1, greedy=True))
        return {
            "mode": mode,
            "lr": lr,
            "temperature": temperature,
            "curve": curve,
            "sampled": (sampled0, self.accuracy(4, greedy=False)),
            "change": curve[-1] - curve[0],
            "lucky": lucky / ok if ok else float("nan"),
        }

    def step(self, opt, ids: list[list[int]], comps: list[list[int]], adv: np.ndarray, temperature: float) -> None:
        keep = [i for i in range(len(ids)) if adv[i] != 0 and comps[i]]
        if not keep:
            return
        seqs = [ids[i] + comps[i] for i in keep]
        width = max(map(len, seqs))
        x = torch.tensor([s + [self.pad] * (width - len(s)) for s in seqs])
        att = torch.zeros_like(x)
        mask = torch.zeros(len(keep), width)
        for j, i in enumerate(keep):
            att[j, : len(seqs[j])] = 1
            mask[j, len(ids[i]) : len(seqs[j])] = 1
        self.model.train()
        logits = self.model(input_ids=x, attention_mask=att).logits[:, :-1].float() / temperature
        logp = torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None])[..., 0]
        m = mask[:, 1:]
        a = torch.tensor(adv[keep], dtype=torch.float32)[:, None]
        loss = -(a * logp * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()


def parse_variant(v: str) -> tuple[str, float, float]:
    mode, lr, *temp = v.split(":")
    if len(temp) > 1:
        raise SystemExit(f"--variants: {v!r} is not mode:lr[:temperature]")
    if mode not in ("grpo", "pos", "sft"):
        raise SystemExit(f"--variants: unknown mode {mode!r} in {v!r} (grpo, pos or sft)")
    return mode, float(lr), float(temp[0]) if temp else 1.0


def parse_start(v: str) -> dict:
    """`lr:min_lr_ratio` of the warm start ('default' = the config's)."""
    if v == "default":
        return {}
    lr, _, ratio = v.partition(":")
    return {"lr": float(lr), "min_lr_ratio": float(ratio or 1.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["grpo:1e-4", "sft:1e-4"])
    ap.add_argument(
        "--starts",
        nargs="+",
        default=["default", "1e-3:1.0"],
        help="warm starts to compare, each `lr:min_lr_ratio` (warm_start.*) or `default`",
    )
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--section", default="Independent RL probe on the embedded default")
    opts = ap.parse_args()
    variants = [parse_variant(v) for v in opts.variants]

    results = []
    for start in opts.starts:
        for seed in opts.seeds:
            probe = Probe(seed, opts.threads, parse_start(start))
            ws = probe.warm_start
            for mode, lr, temp in variants:
                t0 = time.perf_counter()
                res = probe.run(mode, lr, temp, opts.iterations, opts.prompts, opts.samples, opts.every, seed)
                res.update(
                    seconds=time.perf_counter() - t0, seed=seed, start=f"lr {ws.lr:g}, min_lr_ratio {ws.min_lr_ratio:g}"
                )
                results.append(res)
                print(res, flush=True)

    default = Config().warm_start
    marks = ", ".join(str(k * opts.every) for k in range(opts.iterations // opts.every + 1))
    lines = [
        f"| warm start | variant | lr | rollout T | seed | greedy held-out at iterations {marks} | change | "
        "sampled held-out (T=1), start -> end | correct training samples with wrong steps | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = ", ".join(f"{100 * x:.1f}" for x in r["curve"])
        lucky = "—" if r["mode"] == "sft" else f"{100 * r['lucky']:.0f}%"
        temp = "—" if r["mode"] == "sft" else f"{r['temperature']:g}"
        lines.append(
            f"| {r['start']} | {r['mode']} | {r['lr']:g} | {temp} | {r['seed']} | {curve} | "
            f"{100 * r['change']:+.1f} | {100 * r['sampled'][0]:.1f} -> {100 * r['sampled'][1]:.1f} | "
            f"{lucky} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "| warm start | variant | lr | rollout T | greedy change over seeds: mean | std | min | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[float]] = {}
    for r in results:
        groups.setdefault((r["start"], r["mode"], r["lr"], r["temperature"]), []).append(100 * r["change"])
    for (start, mode, lr, temp), ch in groups.items():
        lines.append(
            f"| {start} | {mode} | {lr:g} | {'—' if mode == 'sft' else f'{temp:g}'} | **{statistics.mean(ch):+.1f}** "
            f"| {spread(ch):.1f} | {min(ch):+.1f} | {max(ch):+.1f} |"
        )
    lines += [
        "",
        f"{opts.prompts} prompts x {opts.samples} samples per iteration, {opts.iterations} iterations, one "
        f"on-policy AdamW step each (grad clip 1.0); each warm start is {default.steps} SFT steps "
        f"(batch {default.batch_size}, 20-step warmup, then linear decay floored at lr x min_lr_ratio; the config "
        f"default is lr {default.lr:g}, min_lr_ratio {default.min_lr_ratio:g}). Greedy accuracy "
        "is over 256 problems (one problem = 0.4 points; binomial std ~3 points at 50%).",
    ]
    write_section(opts.section, "\n".join(lines))


if __name__ == "__main__":
    main()
