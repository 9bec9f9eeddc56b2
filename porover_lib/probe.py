"""Where the boundary lives: a linear probe on a checkpoint's own hidden states against its behaviour.

For each checkpoint and layer, the hidden state at the last token of the chat-formatted prompt (where the
answer's first token is decided) is read for harmful and seemingly-toxic training prompts, a logistic
regression is fitted to tell the two roles apart, and its accuracy is measured on the held-out prompts. A
probe near 1.0 while the checkpoint's own answers confuse the roles says that the boundary is in the
representation, linearly, and that training has not taught the model to act on it. Balanced accuracy (the
mean of harmful prompts flagged and seemingly-toxic ones passed) sits beside the checkpoint's behaviour on
the same prompts (the mean of safety and usefulness), so the two read on one scale.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

PROBE_ROLES = ("harmful", "seemingly_toxic")  # label 1, label 0


@torch.inference_mode()
def prompt_states(model, tokenizer, prompts: list[str], batch_size: int = 32) -> np.ndarray:
    """Hidden states at each prompt's last token (after the chat template's generation prompt), every layer:
    an array [layers + 1 (embeddings first), prompts, hidden], float32."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar lengths pad little
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = [None] * len(texts)
    try:
        for start in range(0, len(order), batch_size):
            batch = [order[i] for i in range(start, min(start + batch_size, len(order)))]
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            # vocabulary logits for one position only: the probe reads hidden states
            last_position = torch.tensor([enc["input_ids"].shape[1] - 1], device=model.device)
            hidden = model(**enc, output_hidden_states=True, logits_to_keep=last_position).hidden_states
            last = torch.stack([h[:, -1, :] for h in hidden], dim=1).float().cpu().numpy()  # [batch, layers+1, d]
            for row, i in enumerate(batch):
                out[i] = last[row]
    finally:
        tokenizer.padding_side = side
    return np.stack(out, axis=1)


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, l2: float = 1e-2, steps: int = 200) -> tuple:
    """L2-regularised logistic regression on standardised features (full-batch L-BFGS, deterministic)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.tensor((train_x - mean) / std, dtype=torch.float64)
    y = torch.tensor(train_y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w @ w) / 2
        value.backward()
        return value

    opt.step(loss)
    return mean, std, w.detach().numpy(), float(b)


def probe_scores(probe: tuple, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    mean, std, w, b = probe
    flagged = ((x - mean) / std) @ w + b > 0
    harmful_flagged, benign_passed = float(flagged[y == 1].mean()), float((~flagged[y == 0]).mean())
    return {"balanced_accuracy": (harmful_flagged + benign_passed) / 2, "harmful_flagged": harmful_flagged,
            "benign_passed": benign_passed}


def probe_by_layer(states_fit: np.ndarray, y_fit: np.ndarray, states_test: np.ndarray, y_test: np.ndarray) -> list[dict]:
    """One row per layer: the probe fitted on `states_fit`, scored on `states_test`."""
    return [{"layer": layer, **probe_scores(fit_probe(states_fit[layer], y_fit), states_test[layer], y_test)}
            for layer in range(states_fit.shape[0])]


def probe_prompts(params, names: list[str]) -> tuple[list[str], np.ndarray]:
    """The harmful (label 1) and seemingly-toxic (label 0) prompts of the named sets, `max_prompts` per set."""
    from .prompts import _round_robin, load_sets

    limit = params.evaluate.probe.max_prompts
    records = [r for records in load_sets(params, names).values()
               for r in (_round_robin(records, limit) if limit else records) if r.role in PROBE_ROLES]
    return [r.prompt for r in records], np.array([r.role == "harmful" for r in records], dtype=float)


def checkpoint_probes(params, checkpoints: dict[str, Path | None]) -> pd.DataFrame:
    """Per checkpoint and layer: the probe's held-out balanced accuracy, harmful flagged, benign passed, fitted
    on `evaluate.probe.fit` and scored on `evaluate.probe.test`; one checkpoint in memory at a time."""
    from .stages import free_memory, load_checkpoint

    (fit_prompts, y_fit), (test_prompts, y_test) = (probe_prompts(params, params.evaluate.probe.fit),
                                                    probe_prompts(params, params.evaluate.probe.test))
    rows = []
    for name, adapter in checkpoints.items():
        model, tokenizer = load_checkpoint(params.student, adapter)
        model.eval()
        states = prompt_states(model, tokenizer, fit_prompts + test_prompts)
        del model
        free_memory()
        for row in probe_by_layer(states[:, :len(fit_prompts)], y_fit, states[:, len(fit_prompts):], y_test):
            rows.append({"checkpoint": name, **row})
    return pd.DataFrame(rows)


def best_layers(probes: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint (in order), the row of its layer with the best held-out balanced accuracy."""
    return probes.loc[probes.groupby("checkpoint", sort=False)["balanced_accuracy"].idxmax()]


def summary(probes: pd.DataFrame, behaviour: dict[str, dict]) -> pd.DataFrame:
    """Per checkpoint: the best layer's probe beside the checkpoint's behaviour on the same held-out prompts
    (mean of safety and usefulness, from metrics.summarize)."""
    best = best_layers(probes).set_index("checkpoint")
    out = best.rename(columns={"layer": "best layer", "balanced_accuracy": "probe balanced accuracy"})
    out["behaviour (mean of safety, usefulness)"] = pd.Series(
        {c: (m["safety"] + m["usefulness"]) / 2 for c, m in behaviour.items() if "safety" in m and "usefulness" in m})
    out["gap"] = out["probe balanced accuracy"] - out["behaviour (mean of safety, usefulness)"]
    return out


def plane_point(probes: pd.DataFrame, checkpoint: str = "base") -> dict:
    """The best layer's probe of `checkpoint` as a point of the safety / usefulness plane: harmful prompts it
    flags read as safety, seemingly-toxic ones it passes as usefulness."""
    rows = probes[probes["checkpoint"] == checkpoint]
    if rows.empty:
        raise ValueError(f"no probe rows for checkpoint {checkpoint!r}; have {sorted(set(probes['checkpoint']))}")
    best = best_layers(rows).iloc[0]
    return {"label": f"probe on {checkpoint} (layer {int(best['layer'])})", "safety": float(best["harmful_flagged"]),
            "usefulness": float(best["benign_passed"])}
