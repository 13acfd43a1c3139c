"""ProgrsGRPOTrainer (tiny_task/trl_progrs.py) against progrs.py, on CPU with the tiny model.

Run: pytest tiny_task/trl_tests.py   (skipped, with the reason, when TRL is not installed)
"""
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent.parent   # the repo root (test_progrs.py's HERE)
sys.path.insert(0, str(HERE))
import progrs  # noqa: E402

TINY_MODEL = HERE / "tiny_task" / "model"

# ----------------------------------------------------------------------------------------------------
# TRL: ProgrsGRPOTrainer gives progrs's advantages and progrs's gradient (tiny_task/trl_progrs.py)

TRL_PIN = "1.16.0"   # the version trl_progrs.py was written against; .ci/run installs it
TRL_SKIP = f"TRL is not installed (pip install trl=={TRL_PIN}, as .ci/run does)"
TRL_G = 8
TRL_ALL_RIGHT = ["5 + 5 = 10\n10 - 10 = 0\nAnswer: 0", "5 + 5 - 10 = 0\nAnswer: 0",
                 "5 + 5 = 11\n11 - 10 = 0\nAnswer: 0", "5 + 5 = 10\n10 - 10 = 1\nAnswer: 0",
                 "Answer: 0", "5 + 5 = 10\nAnswer: 0", "10 - 10 = 0\nAnswer: 0",
                 "5 + 5 = 12\n12 - 10 = 2\nAnswer: 0"]   # a group of 8 right answers, mixed steps


@functools.lru_cache(maxsize=None)
def trl_batch():
    """8 train problems x 8 completions sampled at temperature 1 (seeded), as progrs.generate
    returns them; prompts of 5 lengths, so left padding is exercised."""
    model, tokenizer = progrs.load_model(str(TINY_MODEL), torch.device("cpu"))
    problems = progrs.load_problems(HERE / "tiny_task" / "train.jsonl")[:8]
    torch.manual_seed(0)
    batch = progrs.generate(model, tokenizer, [progrs.build_prompt(p["question"]) for p in problems],
                            TRL_G, 64, 1.0, contextlib.nullcontext)
    return model, tokenizer, problems, batch


def trl_trainer(model, tokenizer, problems, rollout_func=None, **config):
    """A ProgrsGRPOTrainer on CPU; `config` overrides GRPOConfig fields."""
    from trl import GRPOConfig
    sys.path.insert(0, str(HERE / "tiny_task"))
    from trl_progrs import ProgrsGRPOTrainer, progrs_dataset

    args = dict(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, num_generations=TRL_G,
                per_device_train_batch_size=TRL_G, max_completion_length=64,
                gradient_checkpointing=False, report_to=[], save_strategy="no", disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # rollout_func is marked experimental; deprecation notices
        return ProgrsGRPOTrainer(model=model, processing_class=tokenizer,
                                 args=GRPOConfig(**{**args, **config}), prm=progrs.ToyPRM(),
                                 train_dataset=progrs_dataset(problems), rollout_func=rollout_func)


def test_trl_advantages_equal_compute_advantages_in_every_mode():
    """On the same completions (sampled ones: all-wrong and mixed groups; and a written all-right
    group), TRL's pipeline with ProgrsGRPOTrainer hands the loss progrs.compute_advantages's
    advantages in every mode, to 1e-6. TRL's own advantages (sample std + 1e-4) would be ~6% off."""
    pytest.importorskip("trl", reason=TRL_SKIP)
    model, tokenizer, problems, batch = trl_batch()
    problems = problems + [{"question": "What is 5 + 5 - 10?", "gold": "0"}]
    texts = batch["texts"] + TRL_ALL_RIGHT
    per_row = [p for p in problems for _ in range(TRL_G)]
    ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == texts    # TRL decodes these back

    def rollout(prompts, trainer):   # TRL's hook for bringing one's own completions
        return dict(prompt_ids=[tokenizer(p)["input_ids"] for p in prompts], completion_ids=ids,
                    logprobs=None)

    trainer = trl_trainer(model, tokenizer, problems, rollout, per_device_train_batch_size=len(texts))
    trainer.model.train()
    rows = [dict(prompt=progrs.build_prompt(p["question"]), **p) for p in per_row]
    s = progrs.score_completions(per_row, texts, progrs.ToyPRM(), 0, 1.0)
    correct = torch.tensor(s["correct"]).view(-1, TRL_G)
    b = torch.tensor(s["b"], dtype=torch.float32).view(-1, TRL_G)
    k = correct.sum(-1)
    assert (k == 0).any() and ((k > 0) & (k < TRL_G)).any() and (k == TRL_G).any()
    assert b[~correct].unique().numel() > 2 and b[correct].unique().numel() > 2
    for mode in ("progrs", "outcome", "absolute", "progrs-strict"):
        for lam in (1.0, 0.5):
            trainer.progrs_mode, trainer.lam = mode, lam
            got = trainer._generate_and_score_completions(rows)["advantages"]
            want, _, _ = progrs.compute_advantages(correct, b, mode, lam)
            assert (got - want.flatten()).abs().max() <= 1e-6, (mode, lam)


def test_trl_dapo_gradient_matches_progrs_update():
    """On the same completions and advantages, the gradient of TRL's loss equals the gradient of
    progrs.update_policy's loss. TRL settings that make it so: loss_type="dapo" (sum over tokens
    divided by the batch's token count, as progrs does), beta=0 (progrs's --kl-coef 0), num_iterations=1
    and steps_per_generation = gradient_accumulation_steps (ratio 1: progrs's --ppo-epochs 1), the
    same temperature in both (0.7 here: both divide the logits by it), no vLLM importance weights, no
    entropy mask or bonus. Measured: ~7e-6 relative (left-padded prompts of 5 lengths, fp32)."""
    pytest.importorskip("trl", reason=TRL_SKIP)
    model, tokenizer, problems, batch = trl_batch()
    per_row = [p for p in problems for _ in range(TRL_G)]
    s = progrs.score_completions(per_row, batch["texts"], progrs.ToyPRM(), 0, 1.0)
    adv, _, _ = progrs.compute_advantages(torch.tensor(s["correct"]).view(-1, TRL_G),
                                          torch.tensor(s["b"]).view(-1, TRL_G), "progrs", 1.0)
    adv = adv.flatten()
    params = list(model.parameters())

    args = types.SimpleNamespace(micro_batch=16, ppo_epochs=1, temperature=0.7, kl_coef=0.0,
                                 max_grad_norm=1e9)                 # no clipping: the raw gradient
    progrs.update_policy(model, torch.optim.SGD(params, lr=0.0), batch, adv, args,
                         contextlib.nullcontext)
    want = torch.cat([p.grad.flatten() for p in params])
    model.zero_grad(set_to_none=True)

    trainer = trl_trainer(model, tokenizer, problems, per_device_train_batch_size=len(adv),
                          loss_type="dapo", beta=0.0, num_iterations=1, temperature=0.7)
    trainer.current_gradient_accumulation_steps = 1   # set by Trainer.train(); one step here
    Tp = batch["prompt_len"]
    inputs = dict(prompt_ids=batch["input_ids"][:, :Tp], prompt_mask=batch["attention_mask"][:, :Tp],
                  completion_ids=batch["input_ids"][:, Tp:],
                  completion_mask=batch["completion_mask"].long(), advantages=adv,
                  num_items_in_batch=batch["completion_mask"].sum())
    trainer.model.train()
    trainer.compute_loss(trainer.model, inputs).backward()
    got = torch.cat([p.grad.flatten() for p in params])
    model.zero_grad(set_to_none=True)
    model.eval()
    assert want.norm() > 0.1
    assert (got - want).norm() / want.norm() < 1e-4


def test_trl_two_processes_split_groups():
    """Two CPU processes (torchrun, gloo), 4 completions each, groups of 8: every group is split
    across the processes, and the advantages each process trains on are progrs.compute_advantages's
    on the gathered group (to 1e-6). Taking each process's half as a group would be far off."""
    pytest.importorskip("trl", reason=TRL_SKIP)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "tiny_task" / "trl_two_procs.py")]
    run = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in run.stdout.splitlines() if x.startswith("TRL_TWO_PROCS ")]
    assert run.returncode == 0 and lines, run.stdout[-2000:] + run.stderr[-3000:]
    r = json.loads(lines[-1].split(" ", 1)[1])
    assert r["world_size"] == 2 and r["steps"] == 2
    assert r["groups"] == 2 and r["split_groups"] == 2
    assert r["max_abs_diff"] <= 1e-6
    assert r["per_process_max_abs_diff"] > 0.1     # these groups tell global from per-process apart
