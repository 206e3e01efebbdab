"""steer-eval: does steering move a suite's behaviour, at what cost, next to baselines?

1. On the dev split only: concept search ranks features by how well their activation on the
   target completion's tokens separates it from the alternative's (AUROC); DiffMean is the mean
   hook activation on target tokens minus that on alternative tokens; each of the top candidates
   is swept and the (feature, strength) with the largest mean dev shift at KL ≤ select_kl wins.
   Test prompts are not passed to any of this (`select_on_dev` never sees them).
2. Every method (steer_methods.py) is swept over the strengths; per point: behaviour shift on dev
   and test, KL on the neutral text, greedy generations of the test prompts (pattern matches,
   perplexity under the unsteered model). Each method's operating strength is chosen on dev.
3. Matched KL: each method's test shift interpolated at fixed KL budgets.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from jaxdict.evaluate import steer_metrics as M
from jaxdict.evaluate.concept_search import Example, example_scores, rank_features, span_activations
from jaxdict.evaluate.steer_methods import Method, build_methods
from jaxdict.evaluate.steer_suite import Prompt, Suite
from jaxdict.sae.inference import SAE


@dataclasses.dataclass(frozen=True)
class Settings:
    strengths: tuple[float, ...] = (-4.0, -2.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    kl_budgets: tuple[float, ...] = (0.1, 0.3, 1.0)
    select_kl: float = 0.5  # the KL budget under which strengths are chosen (issue 15: 0.5 nat)
    n_candidates: int = 6
    max_new_tokens: int = 6
    seed: int = 0
    feature: int | None = None  # skip the search and evaluate this feature
    # Greedy generations cost max_new_tokens forwards per prompt: by default only at each method's
    # dev-chosen strength and the clamp's strongest; True generates at every sweep point.
    generate_all: bool = False

    def __post_init__(self):
        if not self.strengths or not any(s > 0 for s in self.strengths):
            raise ValueError(f"strengths {list(self.strengths)} need at least one value > 0")
        if self.n_candidates < 1 or self.max_new_tokens < 1:
            raise ValueError("n_candidates and max_new_tokens must be >= 1")


def completion_examples(prompts: Sequence[Prompt], which: str) -> list[Example]:
    """prompt + completion with the completion's tokens as the span."""
    out = []
    for p in prompts:
        comp = p.target_ids if which == "target" else p.alternative_ids
        ids = tuple(p.prompt_ids) + tuple(comp)
        out.append(Example(p.prompt + getattr(p, which), ids, tuple(range(len(p.prompt_ids), len(ids)))))
    return out


def best_point(points: Sequence[dict[str, Any]], select_kl: float) -> dict[str, Any] | None:
    """The point with the largest mean dev shift among strengths > 0 (or prompting) at KL ≤ select_kl
    whose dev shift is positive. A strength that moves dev the wrong way is no operating point: the
    demo SAE's first run chose one (dev shift −1.16 nat, the only candidate within the KL budget) and
    then reported its test shift as if it steered."""
    ok = [p for p in points if (p["strength"] is None or p["strength"] > 0) and p["kl"] <= select_kl
          and p["dev_mean_shift"] > 0]
    return max(ok, key=lambda p: p["dev_mean_shift"]) if ok else None


def select_on_dev(lm, sae: SAE, dev: Sequence[Prompt], neutral_ids: Sequence[int], settings: Settings,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Feature, strength and DiffMean from the dev prompts alone."""
    if any(p.split != "dev" for p in dev):
        raise ValueError("select_on_dev takes dev prompts only")
    pos, neg = completion_examples(dev, "target"), completion_examples(dev, "alternative")
    acts_pos, acts_neg = span_activations(lm, sae.hook, pos), span_activations(lm, sae.hook, neg)
    diffmean = np.concatenate(acts_pos).mean(0) - np.concatenate(acts_neg).mean(0)
    ranking = rank_features(example_scores(lm, sae, pos, acts_pos), example_scores(lm, sae, neg, acts_neg),
                            top=max(settings.n_candidates, 20))
    candidates = [settings.feature] if settings.feature is not None else [r["feature"] for r in ranking[:settings.n_candidates]]
    base = M.behaviour(lm, dev)
    tried = []
    for f in candidates:
        method = Method("feature-clamp", feature=int(f))
        for s in [s for s in settings.strengths if s > 0]:
            edits = method.edits(sae, s)
            shift = float(np.mean(M.behaviour(lm, dev, edits) - base))
            kl = M.neutral_kl(lm, neutral_ids, edits)
            tried.append({"feature": int(f), "strength": s, "kl": kl, "dev_mean_shift": shift})
            log(f"  dev: feature {f} c={s:g}: shift {shift:+.3f} nat, KL {kl:.3f}")
    best = best_point(tried, settings.select_kl) or min(tried, key=lambda p: p["kl"])
    return {"ranking": ranking, "candidates": tried, "feature": best["feature"], "strength": best["strength"],
            "diffmean": diffmean.astype(np.float32), "diffmean_norm": float(np.linalg.norm(diffmean))}


def _pattern_fraction(prompts: Sequence[Prompt], texts: Sequence[str]) -> float | None:
    pairs = [(p, t) for p, t in zip(prompts, texts) if p.pattern]
    if not pairs:
        return None
    return sum(bool(re.search(p.pattern, t)) for p, t in pairs) / len(pairs)


def measure_point(lm, sae: SAE, method: Method, strength: float | None, suite: Suite,
                  base: dict[str, np.ndarray], neutral_ids, settings: Settings) -> dict[str, Any]:
    """One (method, strength): shifts on dev and test, KL, test generations, pattern rate, perplexity."""
    edits = method.edits(sae, strength) if strength is not None else None
    prefix = method.prefix_ids
    direction = -1.0 if strength is not None and strength < 0 else 1.0
    point: dict[str, Any] = {"method": method.name, "strength": strength, "kl": M.neutral_kl(lm, neutral_ids, edits, prefix)}
    for split in ("dev", "test"):
        prompts = suite.split(split)
        shifts = M.behaviour(lm, prompts, edits, prefix) - base[split]
        point[split] = M.summary_of(shifts, [p.kind for p in prompts], direction)
        point[split]["shifts"] = [float(x) for x in shifts]
    point["dev_mean_shift"] = point["dev"]["mean_shift"]
    point.update(generations=None, pattern_fraction=None, perplexity=None)
    if settings.generate_all:
        add_generations(lm, sae, method, point, suite, settings)
    return point


def add_generations(lm, sae: SAE, method: Method, point: dict[str, Any], suite: Suite, settings: Settings) -> None:
    """Greedy test generations at a point: texts, pattern-match fraction, perplexity under the unsteered LM."""
    strength = point["strength"]
    edits = method.edits(sae, strength) if strength is not None else None
    test = suite.split("test")
    ctx = [list(p.prompt_ids[:1]) + list(method.prefix_ids) + list(p.prompt_ids[1:]) for p in test]
    gens = M.greedy_generate(lm, ctx, settings.max_new_tokens, edits)
    texts = [lm.tokenizer.decode(g) for g in gens]
    point["generations"] = texts
    point["pattern_fraction"] = _pattern_fraction(test, texts)
    point["perplexity"] = M.perplexity(lm, [p.prompt_ids for p in test], gens)


def matched_kl(points: Sequence[dict[str, Any]], budgets: Sequence[float], sign: float = 1.0) -> dict[str, float | None]:
    """Test mean shift at each KL budget, on the toward-target (sign +1) or suppression (−1) side."""
    side = [p for p in points if (p["strength"] is None and sign > 0) or
            (p["strength"] is not None and np.sign(p["strength"]) == sign)]
    curve = [(p["kl"], p["test"]["mean_shift"]) for p in side]
    return {f"{b:g}": (M.interpolate_at_kl(curve, b) if curve else None) for b in budgets}


def unsteered(lm, suite: Suite, settings: Settings) -> dict[str, Any]:
    """Each prompt's baseline preference log P(target) − log P(alternative), and test generations."""
    base = {s: M.behaviour(lm, suite.split(s)) for s in ("dev", "test")}
    test = suite.split("test")
    gens = M.greedy_generate(lm, [p.prompt_ids for p in test], settings.max_new_tokens)
    texts = [lm.tokenizer.decode(g) for g in gens]
    return {"base": base, "generations": texts, "pattern_fraction": _pattern_fraction(test, texts),
            "perplexity": M.perplexity(lm, [p.prompt_ids for p in test], gens)}


def verdict(chosen: dict[str, Any] | None, n_test_kinds: int, select_kl: float) -> dict[str, Any]:
    """Issue 15's rule: a concept feature moves at least half of the test kinds the right way at
    KL ≤ select_kl (at the strength chosen on dev); otherwise it is word-level."""
    need = math.ceil(n_test_kinds / 2)
    if chosen is None:
        return {"concept_feature": False, "kinds_moved": 0, "kinds_needed": need,
                "reason": f"no strength of the chosen feature moves dev the right way within KL {select_kl} nat"}
    moved = chosen["test"]["kinds_moved"]
    return {"concept_feature": bool(moved >= need and chosen["kl"] <= select_kl), "kinds_moved": moved,
            "kinds_needed": need, "kl": chosen["kl"], "strength": chosen["strength"]}


def run_steer_eval(lm, sae: SAE, suite: Suite, settings: Settings, log: Callable[[str], None] = print
                   ) -> dict[str, Any]:
    """The whole evaluation; returns a JSON-ready dict (see steer_eval_report for the outputs)."""
    if sae.max_activations is None:
        raise ValueError("the SAE has no max activations; run `jaxdict features` and pass --max-activations "
                         "(feature steering clamps to c × max activation)")
    neutral_ids = lm.tokenizer.encode(suite.neutral_text)
    log(f"suite {suite.name}: {len(suite.split('dev'))} dev prompts ({', '.join(suite.kinds('dev'))}), "
        f"{len(suite.split('test'))} test prompts ({', '.join(suite.kinds('test'))})")
    chosen = select_on_dev(lm, sae, suite.split("dev"), neutral_ids, settings, log)
    log(f"chosen on dev: feature {chosen['feature']} at c={chosen['strength']:g}")
    ref = unsteered(lm, suite, settings)
    prefix = tuple(lm.tokenizer.encode(suite.prefix, add_bos=False)) if suite.prefix else None
    methods = build_methods(sae, chosen["feature"], chosen["diffmean"], prefix, settings.seed)
    results = []
    for method in methods:
        strengths = [None] if method.name == "prompting" else list(settings.strengths)
        points = [measure_point(lm, sae, method, s, suite, ref["base"], neutral_ids, settings) for s in strengths]
        for p in points:
            log(f"  {method.name} s={p['strength']}: KL {p['kl']:.3f}, test shift {p['test']['mean_shift']:+.3f}, "
                f"wrong way {p['test']['wrong_way']}/{p['test']['n']}")
        op = best_point(points, settings.select_kl)
        gen_at = [op] if op is not None else []
        if method.name == "feature-clamp":
            gen_at.append(max((p for p in points if p["strength"] is not None), key=lambda p: p["strength"]))
        for p in gen_at:
            if p["generations"] is None:
                add_generations(lm, sae, method, p, suite, settings)
        results.append({**method.describe(), "points": points,
                        "chosen_strength": None if op is None else op["strength"], "operating_point": op is not None,
                        "matched_kl": matched_kl(points, settings.kl_budgets, 1.0),
                        "matched_kl_suppression": matched_kl(points, settings.kl_budgets, -1.0)})
    clamp = results[0]
    op = next((p for p in clamp["points"] if p["strength"] == clamp["chosen_strength"]), None)
    test = suite.split("test")
    return {
        "suite": {"name": suite.name, "path": suite.path, "description": suite.description,
                  "dev_kinds": suite.kinds("dev"), "test_kinds": suite.kinds("test"),
                  "n_dev": len(suite.split("dev")), "n_test": len(test), "prefix": suite.prefix,
                  "neutral_tokens": len(neutral_ids)},
        "sae": {"hook": sae.hook, "n_features": sae.n_features, "arch": sae.cfg.arch, "step": sae.step},
        "settings": {**dataclasses.asdict(settings), "strengths": list(settings.strengths)},
        "selection": {k: v for k, v in chosen.items() if k != "diffmean"},
        "unsteered": {
            "prompts": [{"line": p.line, "kind": p.kind, "split": p.split, "prompt": p.prompt, "target": p.target,
                         "alternative": p.alternative, "boundary_merges": p.boundary_merges,
                         "preference": float(b)}
                        for split in ("dev", "test") for p, b in zip(suite.split(split), ref["base"][split])],
            "generations": ref["generations"], "pattern_fraction": ref["pattern_fraction"],
            "perplexity": ref["perplexity"]},
        "methods": results,
        "verdict": verdict(op, len(suite.kinds("test")), settings.select_kl),
    }
