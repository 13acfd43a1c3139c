"""
trl_progrs.py: PROGRS inside TRL's GRPOTrainer, for runs that outgrow progrs.py (many GPUs, vLLM).

ProgrsGRPOTrainer gives every completion exactly the advantage progrs.compute_advantages gives it:
the same verifier, PRM, coherence score, outcome-conditioned centering, modes and lam. It computes
nothing itself: every number comes from progrs.py, so this file and progrs.py cannot drift apart.
Copy this file next to progrs.py (it needs `import progrs`). Written against trl==1.16.0.

    import progrs
    from trl import GRPOConfig
    from trl_progrs import ProgrsGRPOTrainer, progrs_dataset
    trainer = ProgrsGRPOTrainer(model="Qwen/Qwen2.5-0.5B", args=GRPOConfig(...),
                                train_dataset=progrs_dataset(progrs.load_problems("train.jsonl")),
                                prm=progrs.ToyPRM(), mode="progrs", lam=1.0)
    trainer.train()

Where PROGRS meets TRL (trl 1.16.0, GRPOTrainer._generate_and_score_completions):
  1. Each process generates its own slice of the batch. A group's G completions of one prompt can sit
     on different processes (G = 8 with 4 completions per process: half a group on each).
  2. TRL calls _calculate_rewards with this process's completions and expects back the rewards of
     *every* process, gathered in process order. We return two columns, "correct" and "b", which is
     also what TRL logs as rewards/correct/mean and rewards/b/mean.
  3. TRL then computes its own advantages, (r - mean) / (std + 1e-4) per group with the sample std
     (scale_rewards="group"), and keeps this process's slice. We replace them with
     progrs.compute_advantages on the gathered (P, G) grid (population std, eps 1e-6), then take the
     same slice. Gathering first is what makes a split group right: centering needs the mean b of all
     the group's wrong completions, and A_out needs the whole group's outcomes.
  4. TRL's loss then uses these advantages unchanged. With loss_type="dapo" (the default), beta=0,
     num_iterations=1 and the same temperature, its gradient is progrs.py's update gradient
     (tiny_task/trl.md says which settings and how close).
"""
from __future__ import annotations

import time
import warnings

import torch
from accelerate.utils import gather
from trl import GRPOTrainer

import progrs


def progrs_dataset(problems: list[dict], tokenizer=None, chat: bool = False):
    """progrs problems ({"question", "gold"}) -> a datasets.Dataset with TRL's "prompt" column.

    The prompt is progrs.build_prompt's, so the policy sees the same text in both trainers. (With
    chat=True it is already templated: TRL then sees a plain string and adds nothing.)"""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": progrs.build_prompt(p["question"], tokenizer, chat),
                               "question": p["question"], "gold": p["gold"]} for p in problems])


class _Column:
    """A reward function in name only: TRL logs rewards/<name>/mean; the values come from
    ProgrsGRPOTrainer._calculate_rewards, so TRL never calls it."""

    def __init__(self, name: str):
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError("ProgrsGRPOTrainer scores completions in _calculate_rewards")


class ProgrsGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with PROGRS advantages. Extra arguments, as progrs.py's flags:
    prm (progrs.ToyPRM() or progrs.ModelPRM), mode ("progrs" | "outcome" | "absolute" |
    "progrs-strict"), lam, prm_quantile (default: the quantile the PRM's config names, else its
    lowest, as progrs.py), lam_var.
    The train dataset needs "prompt", "question" and "gold" columns (progrs_dataset makes them)."""

    def __init__(self, *args, prm, mode: str = "progrs", lam: float = 1.0,
                 prm_quantile: float | None = None, lam_var: float = 1.0, **kwargs):
        # TRL needs reward functions; ours only name the two columns _calculate_rewards returns
        super().__init__(*args, reward_funcs=[_Column("correct"), _Column("b")], **kwargs)
        self.prm, self.progrs_mode, self.lam, self.lam_var = prm, mode, lam, lam_var
        self.q_index = progrs.quantile_index(prm, prm_quantile)   # progrs.py's rule, shared
        bound = progrs.max_dominant_lam(self.num_generations, mode)
        if lam >= bound:
            warnings.warn(f"lam {lam} >= {bound:.2f}, the bound for mode {mode} with G={self.num_generations}:"
                          " a wrong completion can reach a right one's advantage")

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """This process's completions -> (N, 2) [correct, b] of ALL processes' completions.

        Each process verifies and PRM-scores only its own completions (so the PRM's cost is split
        across processes); gather() then concatenates every process's rows in process order, which is
        the order TRL's sampler laid the groups out in: G consecutive rows per prompt."""
        t0 = time.perf_counter()
        problems = [{"question": x["question"], "gold": x["gold"]} for x in inputs]
        s = progrs.score_completions(problems, completions, self.prm, self.q_index, self.lam_var)
        local = torch.tensor([s["correct"], s["b"]], dtype=torch.float32).T           # (n, 2)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["progrs/score_seconds"].append(time.perf_counter() - t0)
        self._progrs_scores = gather(local.to(self.accelerator.device))             # (N, 2)
        return self._progrs_scores

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)   # TRL's advantages: replaced below
        G = self.num_generations if self.model.training else self.num_generations_eval
        correct, b = self._progrs_scores.unbind(-1)                                  # (N,) each
        # progrs's formula, not TRL's: progrs divides by the population std + progrs.ADV_EPS (1e-6),
        # TRL by the sample std + 1e-4, which makes A_out ~6% smaller at G = 8 (sqrt(7/8)) and, with
        # one right answer in 8, another 3e-4 (relative) smaller. TRL's scale_rewards never applies.
        adv, _, _ = progrs.compute_advantages(correct.bool().view(-1, G), b.view(-1, G),
                                              self.progrs_mode, self.lam)            # (N/G, G)
        adv = adv.flatten()                                                          # (N,)
        # keep this process's rows: the slice TRL cut its own advantages with
        n, rank = len(inputs), self.accelerator.process_index
        out["advantages"] = adv[rank * n:(rank + 1) * n]
        self._logs["advantages"].extend(adv.tolist())  # the completions table shows ours, not TRL's
        return out
