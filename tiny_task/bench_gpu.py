"""Time progrs.py on a GPU with a Qwen2.5-0.5B-shaped model, offline (random weights, no hub).

    python tiny_task/bench_gpu.py --out out/bench

The model has Qwen2.5-0.5B's exact shape (24 layers, hidden 896, 14 heads, 2 KV heads, vocabulary
151,936, tied embeddings; 494M parameters) and random weights, and uses the tiny task's tokenizer, so
its completions are noise that almost never emits EOS: every rollout runs to --max-new-tokens. The
numbers are therefore the worst case for that length. It runs progrs.main() as a user would, with
the 0.5B-sized defaults except the step count, and prints seconds per phase, peak GPU memory of the
whole run and of the update alone.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import progrs  # noqa: E402

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                  max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/bench")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=256)
    a = p.parse_args()
    out = Path(a.out)
    model_dir = out / "qwen05b-random"
    tok = AutoTokenizer.from_pretrained(HERE / "model")
    eos = tok.eos_token_id
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B, bos_token_id=eos, eos_token_id=eos,
                                             pad_token_id=eos))
    model.generation_config.eos_token_id = eos
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()

    # peak memory of the update alone (the generate phase's KV cache is gone by then)
    update_peaks, run_peaks = [], []
    update_policy = progrs.update_policy

    def measured_update(*args, **kwargs):
        run_peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        torch.cuda.reset_peak_memory_stats()
        out = update_policy(*args, **kwargs)
        update_peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        return out
    progrs.update_policy = measured_update

    t0 = time.perf_counter()
    # the tiny task's files: the GPU machine may have no network for GSM8K, and random weights
    # cannot solve either task, so the prompts only set the prompt length
    progrs.main(["--model", str(model_dir), "--out", str(out / "run"), "--steps", str(a.steps),
                 "--max-new-tokens", str(a.max_new_tokens), "--eval-size", "64",
                 "--eval-every", str(a.steps), "--data", str(HERE / "train.jsonl"),
                 "--eval-data", str(HERE / "test.jsonl")])
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train_accuracy" in r][1:] or [r for r in rows if "train_accuracy" in r]
    mean = {k: sum(r[k] for r in steps) / len(steps) for k in ("t_generate", "t_score", "t_update")}
    print(json.dumps(dict(
        device=torch.cuda.get_device_name(), wall_s=round(wall, 1),
        rollouts_per_step=16 * 8, completion_tokens=steps[-1]["completion_tokens"],
        **{k: round(v, 2) for k, v in mean.items()},
        t_eval_64=[round(r["t_eval"], 2) for r in rows if "t_eval" in r],
        peak_update_gib=round(max(update_peaks), 1),
        peak_gpu_gib=round(max(run_peaks + [torch.cuda.max_memory_allocated() / 2**30]), 1))))


if __name__ == "__main__":
    main()
