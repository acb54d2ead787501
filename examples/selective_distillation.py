"""Selective distillation with gradalign's per-token weights: a minimal torch loop to copy into a trainer.

    gradalign weights records.jsonl --teacher demo --method forward_kl --out weights.jsonl
    python examples/selective_distillation.py --weights weights.jsonl --sequences rollouts.jsonl \\
        --student STUDENT_DIR --teacher TEACHER_DIR --steps 2

``--weights``: what ``gradalign weights`` wrote (JSONL or Parquet; docs/training_export.md).
``--sequences``: the trainer's own data, one JSON object per line, ``{"question_id", "rollout",
"prompt_ids", "completion_ids"}``: the tree's base rollouts, since a weight is a position on one of
those completions (records name the positions, not whole completions). Every completion token t
gets the weight of row (question_id, rollout, t), or the file's ``default`` where no row names it.

The loss is token-level forward KL, KL(q || p) of the teacher's and the student's next-token
distributions at each completion position (TRL's generalized JSD at beta = 0), times the token's
weight, summed and divided by the sum of the weights: a weighted mean, which for a 0/1 mask is the
mean over the selected tokens (TRL's "batchmean" over unmasked tokens). A zero-weight token
contributes nothing to the loss or its gradient.

Needs torch and transformers (the engine extra), and the light client to read the weights.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gradalign_client.training_weights import read_weights, weight_map

# Where this plugs into TRL (not imported here). GKDTrainer.compute_loss reduces the loss before one
# could weight it, so override it and ask generalized_jsd_loss for the unreduced loss:
#
#     class SelectiveGKDTrainer(GKDTrainer):  # trl.experimental.gkd
#         def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
#             student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
#             with torch.no_grad():
#                 teacher = self.teacher_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
#             start = inputs["prompts"].shape[1]  # prompts are left-padded: completions start at `start`
#             per_token = self.generalized_jsd_loss(
#                 student.logits[:, start - 1 : -1], teacher.logits[:, start - 1 : -1],
#                 labels=None, beta=self.beta, reduction="none",
#             ).sum(-1)  # (batch, completion length); labels=None keeps the shape, we mask below
#             weights = inputs["token_weights"] * (inputs["labels"][:, start:] != -100)  # = token_weights() below
#             loss = (per_token * weights).sum() / weights.sum().clamp_min(1e-8)  # = selective_loss()
#             return (loss, student) if return_outputs else loss
#
# with a collator that adds "token_weights" (batch, completion length, right-padded with 0) from the
# weight map, and GKDConfig(lmbda=0.0, seq_kd=False): the weights are positions on the tree's rollouts,
# so the trainer must train on those sequences; a completion generated afresh (lmbda > 0) has no weights.
# GOLD-style trainers and DistillationTrainer take the same override wherever their per-token loss
# exists before the reduction; for a per-sample reverse-KL (Tinker-style advantage) trainer, multiply
# each token's advantage by its weight instead.

EPS = 1e-8


@dataclass
class Rollout:
    """One training sequence: a base rollout of the tree the weights came from."""

    question_id: str
    rollout: int
    prompt_ids: list[int]
    completion_ids: list[int]


def load_weights(path: str | Path) -> tuple[dict[tuple[str, int], dict[int, float]], float, list[dict]]:
    """({(question_id, rollout): {position: weight}}, the default weight, the rows) of a weights file."""
    header, rows = read_weights(path)
    return weight_map(rows), float(header["default"]), rows


def load_sequences(path: str | Path) -> list[Rollout]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Rollout(**json.loads(line)) for line in lines if line.strip()]


def check_token_ids(rows: list[dict], rollouts: list[Rollout]) -> int:
    """Rows that name a token must match the sequence at that position (a guard against misaligned data)."""
    by_key = {(r.question_id, r.rollout): r.completion_ids for r in rollouts}
    checked = 0
    for row in rows:
        completion = by_key.get((row["question_id"], row["rollout"]))
        if completion is None:
            continue
        if row["position"] >= len(completion):
            raise ValueError(
                f"{row['question_id']} rollout {row['rollout']}: position {row['position']} is past the end"
            )
        if row["token_id"] is not None:
            if completion[row["position"]] != row["token_id"]:
                raise ValueError(f"{row['question_id']} rollout {row['rollout']}: token at {row['position']} differs")
            checked += 1
    return checked


def token_weights(rollout: Rollout, wmap: dict, default: float) -> torch.Tensor:
    """The weight of every completion token of ``rollout``: its row's weight, else ``default``."""
    named = wmap.get((rollout.question_id, rollout.rollout), {})
    return torch.tensor([named.get(t, default) for t in range(len(rollout.completion_ids))], dtype=torch.float32)


def completion_logits(model, rollout: Rollout) -> torch.Tensor:
    """(completion length, vocab): the logits that predict each completion token."""
    ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
    start = len(rollout.prompt_ids)
    return model(input_ids=ids).logits[0, start - 1 : start - 1 + len(rollout.completion_ids)].float()


def per_token_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) at each position (TRL's generalized_jsd_loss at beta = 0, before any reduction)."""
    log_p, log_q = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)


def selective_loss(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t loss_t / sum_t w_t (0 when every weight is 0)."""
    return (per_token * weights).sum() / weights.sum().clamp_min(EPS)


def batch_loss(student, teacher, rollouts: list[Rollout], wmap: dict, default: float) -> torch.Tensor:
    """The selective loss of one batch: every rollout's tokens pooled, one weighted mean."""
    per_token, weights = [], []
    for rollout in rollouts:
        with torch.no_grad():
            target = completion_logits(teacher, rollout)
        per_token.append(per_token_forward_kl(completion_logits(student, rollout), target))
        weights.append(token_weights(rollout, wmap, default))
    return selective_loss(torch.cat(per_token), torch.cat(weights))


def train(student, teacher, rollouts: list[Rollout], wmap: dict, default: float, steps: int, lr: float) -> list[float]:
    """``steps`` full-batch AdamW steps on the selective loss; the loss before each step."""
    teacher.eval()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = batch_loss(student, teacher, rollouts, wmap, default)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="what `gradalign weights` wrote (.jsonl or .parquet)")
    p.add_argument("--sequences", required=True, help="JSONL: question_id, rollout, prompt_ids, completion_ids")
    p.add_argument("--student", required=True, help="student model directory")
    p.add_argument("--teacher", required=True, help="teacher model directory (same tokenizer)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> dict:
    """Train and return what happened: the losses, tokens seen, tokens weighted, token ids checked."""
    from transformers import AutoModelForCausalLM

    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    wmap, default, rows = load_weights(args.weights)
    rollouts = load_sequences(args.sequences)
    checked = check_token_ids(rows, rollouts)
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
    losses = train(student, teacher, rollouts, wmap, default, args.steps, args.lr)
    weights = torch.cat([token_weights(r, wmap, default) for r in rollouts])
    result = {
        "losses": losses,
        "sequences": len(rollouts),
        "tokens": int(weights.numel()),
        "weighted_tokens": int((weights > 0).sum()),
        "token_ids_checked": checked,
        "finite": all(math.isfinite(x) for x in losses),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
