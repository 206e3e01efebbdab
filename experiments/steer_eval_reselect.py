"""Re-apply steer-eval's operating-point rule (jaxdict.evaluate.steer_eval.best_point) to the points
a finished run measured, and rewrite its report, without running the model again.

    python experiments/steer_eval_reselect.py runs/demo/steer-unsafe-code --dashboard ../find-unsafe-code/dashboard

Made for the demo run of 2026-11-29, measured before best_point required a positive dev shift. It
refuses when a new operating point has no greedy generations (those need the model: rerun steer-eval).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxdict.evaluate.steer_eval import best_point, verdict
from jaxdict.evaluate.steer_eval_report import write_outputs


def reselect(result: dict) -> dict:
    select_kl = result["settings"]["select_kl"]
    for method in result["methods"]:
        op = best_point(method["points"], select_kl)
        if op is not None and op["generations"] is None:
            raise SystemExit(f"{method['name']}: the new operating point s={op['strength']} has no generations; "
                             "rerun jaxdict steer-eval")
        method["chosen_strength"] = None if op is None else op["strength"]
        method["operating_point"] = op is not None
    clamp = result["methods"][0]
    op = next((p for p in clamp["points"] if p["strength"] == clamp["chosen_strength"]), None)
    result["verdict"] = verdict(op, len(result["suite"]["test_kinds"]), select_kl)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="a steer-eval output folder (steer_eval.json)")
    p.add_argument("--dashboard", default=None)
    a = p.parse_args()
    path = Path(a.out) / "steer_eval.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give a `jaxdict steer-eval --out` folder")
    result = reselect(json.loads(path.read_text()))
    path.write_text(json.dumps(result, indent=1))
    for written in write_outputs(result, Path(a.out), a.dashboard):
        print(written)


if __name__ == "__main__":
    main()
