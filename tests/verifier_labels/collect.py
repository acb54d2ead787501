"""Collect real SmolLM2-135M-Instruct completions for the verifier labelled set (run once, by hand).

    .venv/bin/python tests/verifier_labels/collect.py --out /tmp/completions.jsonl

Samples completions exactly as the engine prompts the student (chat template, the default
instruction of each verifier) on questions of the shared data sets (``../shared/data`` from the
repository root), at temperatures 0.7 and 1.0. The output holds the completion text and the
question, never a verdict: labels are added by careful reading (``CONVENTION.md``), not by code.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gradalign_engine.backends import BranchRequest  # noqa: E402
from gradalign_engine.backends.hf import HFBackend  # noqa: E402
from gradalign_engine.config import ModelSpec, PromptConfig  # noqa: E402
from gradalign_engine.data import load_questions  # noqa: E402
from gradalign_engine.prompts import render_prompt  # noqa: E402

# (dataset file, questions drawn, completion length): one verifier per data set family.
PLAN = {
    "choice": [("arc_easy.jsonl", 60, 96)],
    "yesno": [("boolq.jsonl", 60, 96)],
    "numeric": [("addsub.jsonl", 20, 160), ("multiarith.jsonl", 20, 160), ("gsm8k.jsonl", 20, 192)],
}
TEMPERATURES = (0.7, 1.0)
SAMPLES = 2  # per question and temperature


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()
    backend = HFBackend(ModelSpec(model="smollm2-135m", device="cpu"))
    tok = backend.tokenizer
    rng = random.Random(args.seed)
    rows = []
    for verifier, sources in PLAN.items():
        for filename, count, max_new in sources:
            questions = load_questions(Path(args.data) / filename)
            picked = rng.sample(questions, count)
            for temperature in TEMPERATURES:
                requests = [
                    BranchRequest(
                        prefix=tuple(render_prompt(tok, q, PromptConfig())),
                        n=SAMPLES,
                        max_new_tokens=max_new,
                        seed=rng.randrange(2**62),
                    )
                    for q in picked
                ]
                outs = backend.generate(requests, temperature=temperature, top_p=1.0, top_k=0)
                for q, samples in zip(picked, outs):
                    for k, ids in enumerate(samples):
                        rows.append(
                            {
                                "item": f"{q.id}-t{temperature}-s{k}",
                                "verifier": verifier,
                                "dataset": filename,
                                "question_id": q.id,
                                "temperature": temperature,
                                "question": q.question,
                                "choices": list(q.choices),
                                "answer": q.answer,
                                "completion": tok.decode(ids, skip_special_tokens=True),
                                "truncated": len(ids) >= max_new and (not ids or ids[-1] not in backend.eos_token_ids),
                            }
                        )
                print(f"{verifier} {filename} t={temperature}: {len(rows)} completions so far", file=sys.stderr)
    with open(args.out, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
