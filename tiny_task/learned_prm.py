"""Learned PRMs (frozen) for progrs.py's --prm FOLDER, behind the toy PRM's interface: taus,
default_tau and score_batch(questions, steps) -> [(S, Q) quantiles of p(step is sound)].

Each step is read at its last token:
  token classification with a quantile head (labels q0.1, q0.5, ...; quantiles that cannot cross);
  token classification with a two-class head (p(good));
  a causal LM at a step tag, p(good) / (p(good) + p(bad)) of the next token (Math-Shepherd: tag ки,
  tokens + and -; others from --prm-tag / --prm-tokens or the config's progrs_step_tag /
  progrs_step_tokens; the flags win).
A config may name the quantile to read (progrs_quantile); --prm-quantile wins (progrs.quantile_index).
Models load through progrs.from_pretrained, the policy's loader: a folder or a hub id alike.

    python progrs.py --prm tiny_task/prm          # the quantile PRM build_prm.py trains
"""
import math
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from progrs import ProgrsError, build_prompt, from_pretrained, is_causal_lm, quantile_index  # noqa: E402

STEP_SEP = "\n"
_TAU_LABEL = re.compile(r"q_?(0?\.[0-9]+)")
_GOOD_LABEL = re.compile(r"good|pos(itive)?|\+|correct|true|1", re.IGNORECASE)  # a whole label


def prm_inputs(tokenizer, question: str, steps: list[str], tag: str | None = None):
    """(ids, index of each step's last token); pieces are tokenised alone, so the ends are exact."""
    def tok(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tok(build_prompt(question))
    ends = []
    for step in steps:
        ids = ids + tok(f"{step} {tag}" if tag else step + STEP_SEP)
        ends.append(len(ids) - 1)
        if tag:
            ids = ids + tok(STEP_SEP)
    return ids, ends


def quantiles_from_logits(z: torch.Tensor) -> torch.Tensor:
    """(..., Q) raw head outputs -> (..., Q) quantiles in (0, 1), strictly increasing along the last dim."""
    steps = torch.cat([z[..., :1], torch.nn.functional.softplus(z[..., 1:])], -1)
    return torch.sigmoid(steps.float().cumsum(-1))


class ModelPRM:
    def __init__(self, name: str, device, amp, tag=None, tokens=None, batch_size: int = 64):
        import transformers as tf

        def auto_class(config):
            causal = bool(tag) or is_causal_lm(config)
            return tf.AutoModelForCausalLM if causal else tf.AutoModelForTokenClassification
        config, self.tokenizer, self.model, info = from_pretrained("--prm", name, auto_class)
        self.causal = auto_class(config) is tf.AutoModelForCausalLM
        self.default_tau = getattr(config, "progrs_quantile", None)
        self.tag = None
        labels = [str(self.model.config.id2label[i]) for i in range(self.model.config.num_labels)]
        taus = [_TAU_LABEL.fullmatch(x) for x in labels]
        body = {n for n, _ in self.model.base_model.named_parameters(prefix=self.model.base_model_prefix)}
        if self.causal:  # the flags win over the config, the config over Math-Shepherd's
            self.tag = tag or getattr(config, "progrs_step_tag", "ки")
            pair = tokens.split(",") if tokens else getattr(config, "progrs_step_tokens", ["+", "-"])
            ids = [self.tokenizer.encode(w, add_special_tokens=False) for w in [self.tag, *pair]]
            if len(ids) != 3 or any(len(i) != 1 for i in ids):
                raise ProgrsError(f"--prm-tag / --prm-tokens: {[self.tag, *pair]} must each be one token of "
                                  f"--prm {name}'s tokenizer (Math-Shepherd's: ки, +, -)")
            self.kind = "step-tag"
            self.taus = (0.5,)
            self.good_bad = [ids[1][0], ids[2][0]]
        elif set(info["missing_keys"]) - body:  # from_pretrained would make up a random head
            raise ProgrsError(f"--prm {name}: this checkpoint has no classification head "
                              f"({', '.join(sorted(info['missing_keys']))} missing); expected a trained PRM")
        elif all(taus):
            self.kind = "quantile"
            self.taus = tuple(float(m[1]) for m in taus)
            if list(self.taus) != sorted(set(self.taus)):
                raise ProgrsError(f"--prm {name}: quantile labels {labels} are not increasing taus")
        elif len(labels) == 2:
            self.kind = "two-class"
            self.taus = (0.5,)
            good = [i for i, x in enumerate(labels) if _GOOD_LABEL.fullmatch(x.replace("LABEL_", ""))]
            self.good = good[-1] if good else 1
        else:
            raise ProgrsError(f"--prm {name}: expected a quantile head (labels q0.1, q0.5, ...) or a "
                              f"two-class head, got {len(labels)} outputs {labels[:6]}")
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.amp = amp
        self.batch_size = batch_size
        self.max_len = min(getattr(self.model.config, "max_position_embeddings", None) or 4096, 4096)
        self.q_index = quantile_index(self)  # the column a run reads (progrs.build_prm sets it)

    def read(self, z: torch.Tensor) -> torch.Tensor:
        """(S, K) head outputs at the steps' ends -> (S, Q) quantiles of p(step is sound)."""
        if self.kind == "step-tag": return z[:, self.good_bad].softmax(-1)[:, :1]
        if self.kind == "two-class": return z.softmax(-1)[:, [self.good]]
        return quantiles_from_logits(z)

    @torch.no_grad()
    def score_batch(self, questions: list[str], steps: list[list[str]]) -> list[torch.Tensor]:
        """Each distinct (question, steps) once (groups repeat completions), in right-padded batches."""
        keys = [(q, tuple(s)) for q, s in zip(questions, steps)]
        unique = list(dict.fromkeys(keys))
        items = [prm_inputs(self.tokenizer, q, list(s), self.tag) for q, s in unique]
        items = [(ids[:self.max_len], ends) for ids, ends in items]  # steps cut off get no opinion
        out = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            ids = torch.full((len(chunk), max(len(x) for x, _ in chunk)), self.tokenizer.pad_token_id)
            att = torch.zeros_like(ids)                                               # (b, L)
            for row, (x, _) in enumerate(chunk):
                ids[row, :len(x)] = torch.tensor(x)
                att[row, :len(x)] = 1
            net = self.model.base_model if self.causal else self.model
            with self.amp():  # a causal LM's vocabulary head runs only at the steps' ends
                h = net(input_ids=ids.to(self.device), attention_mask=att.to(self.device))
                h = h.last_hidden_state if self.causal else h.logits                  # (b, L, H or K)
            for row, (_, ends) in enumerate(chunk):
                at = h[row, [e for e in ends if e < self.max_len]]                    # (S', H or K)
                z = self.model.get_output_embeddings()(at) if self.causal else at
                q = self.read(z.float().cpu())                                        # (S', Q)
                cut = torch.full((len(ends) - len(q), q.shape[1]), math.nan)
                out.append(torch.cat([q, cut]))                                       # (S, Q)
        scored = dict(zip(unique, out))
        return [scored[k] for k in keys]
