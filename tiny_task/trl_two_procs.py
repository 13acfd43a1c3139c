"""
Two CPU processes, groups split across them: ProgrsGRPOTrainer's advantages equal progrs's.

    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 tiny_task/trl_two_procs.py

Each process holds 4 completions and a group has 8, so every group sits half on rank 0 and half on
rank 1. Two training steps (2 groups) run with real generation; each rank records its completions and
the advantages the trainer trained on. Rank 0 then gathers them, re-scores the 8 completions of each
group with progrs.score_completions, and prints one line:
    TRL_TWO_PROCS {"world_size": 2, "groups": 2, "split_groups": 2, "max_abs_diff": ..., ...}
max_abs_diff is the largest gap between the trainer's advantages and progrs.compute_advantages on the
gathered groups. per_process_max_abs_diff is what computing them on each process's half alone would
have got wrong: it shows that these groups can tell the two apart.
"""
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from accelerate.utils import gather_object  # noqa: E402
from trl import GRPOConfig  # noqa: E402

import progrs  # noqa: E402
from trl_progrs import ProgrsGRPOTrainer, progrs_dataset  # noqa: E402

G, PER_PROCESS, STEPS, MODE, LAM = 8, 4, 2, "progrs", 1.0


class Recording(ProgrsGRPOTrainer):
    """Keeps what each process scored and the advantages it trained on."""
    seen = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self.seen.append(dict(problems=[{"question": x["question"], "gold": x["gold"]} for x in inputs],
                              texts=list(completions)))
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.seen[-1]["adv"] = out["advantages"].tolist()
        return out


def main():
    model, tokenizer = progrs.load_model(str(HERE / "model"), torch.device("cpu"))
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, seed=0,
                      per_device_train_batch_size=PER_PROCESS, num_generations=G, max_steps=STEPS,
                      max_completion_length=64, learning_rate=1e-4, gradient_checkpointing=False,
                      report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1)
    trainer = Recording(model=model, processing_class=tokenizer, args=args, prm=progrs.ToyPRM(),
                        train_dataset=progrs_dataset(progrs.load_problems(HERE / "train.jsonl")[:64]),
                        mode=MODE, lam=LAM)
    trainer.train()
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    per_rank = gather_object([dict(rank=rank, seen=Recording.seen)])   # [rank 0's, rank 1's]
    if rank != 0:
        return
    per_rank.sort(key=lambda r: r["rank"])
    diffs, local_diffs, split, right = [], [], 0, []
    for step in range(STEPS):
        parts = [r["seen"][step] for r in per_rank]                     # process order
        problems = [p for part in parts for p in part["problems"]]
        texts = [t for part in parts for t in part["texts"]]
        owner = [r for r, part in enumerate(parts) for _ in part["texts"]]      # the rank of each row
        ours = torch.tensor([a for part in parts for a in part["adv"]])          # (N,)
        s = progrs.score_completions(problems, texts, progrs.ToyPRM(), 0, 1.0)
        correct, b = torch.tensor(s["correct"]), torch.tensor(s["b"], dtype=torch.float32)
        ref, _, _ = progrs.compute_advantages(correct.view(-1, G), b.view(-1, G), MODE, LAM)
        diffs.append(float((ours - ref.flatten()).abs().max()))
        # the mistake this guards against: each process's rows taken as a group of their own
        k = len(parts[0]["texts"])
        local, _, _ = progrs.compute_advantages(correct.view(-1, k), b.view(-1, k), MODE, LAM)
        local_diffs.append(float((local.flatten() - ref.flatten()).abs().max()))
        for g in range(0, len(texts), G):                                   # one prompt per group
            assert len({p["question"] for p in problems[g:g + G]}) == 1
            split += len(set(owner[g:g + G])) > 1
        right += correct.view(-1, G).sum(-1).tolist()
    print("TRL_TWO_PROCS " + json.dumps(dict(
        world_size=world, groups=len(right), split_groups=split, per_process=PER_PROCESS, group_size=G,
        max_abs_diff=max(diffs), per_process_max_abs_diff=max(local_diffs),
        right_per_group=right, steps=trainer.state.global_step)), flush=True)


if __name__ == "__main__":
    try:
        main()
    finally:  # gloo's threads outliving the process group abort the interpreter at exit
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
