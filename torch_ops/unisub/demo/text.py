"""Text classification tasks built offline for the MiniLM demo.

The corpus is the dataset descriptions scikit-learn bundles (``sklearn/datasets/descr/*.rst``,
the ``DESCR`` strings of its loaders): each description is cut into snippets of ``words``
consecutive words, and every snippet is labelled by the description it comes from. Task ``t`` asks
"does this snippet come from one of the descriptions in S_t?", S_t a random half of the
descriptions (seeded by the task id), the text analogue of the digits demo's binary splits. The
snippets are split once into train and test sets (the same split for every task), balanced across
descriptions by a cap per description.
"""
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

# Descriptions shorter than this (in words) give too few snippets to be a class of their own.
MIN_WORDS = 150


def descriptions() -> Dict[str, str]:
    """{name: text} of the dataset descriptions shipped with scikit-learn (sorted by name)."""
    import sklearn

    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "descr")
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".rst"):
            with open(os.path.join(folder, f), encoding="utf-8") as fh:
                out[f[:-4]] = fh.read()
    if not out:
        raise RuntimeError(f"no dataset descriptions found in {folder}")
    return out


def snippets(words: int = 8, stride: int = 4, cap: int = 40) -> Dict[str, List[str]]:
    """{description: snippets}: windows of ``words`` words (letters only, rst markup and numbers
    dropped) every ``stride`` words, at most ``cap`` per description (evenly spaced)."""
    out = {}
    for name, text in descriptions().items():
        toks = re.findall(r"[A-Za-z][A-Za-z'-]+", text)
        if len(toks) < MIN_WORDS:
            continue
        wins = [" ".join(toks[i:i + words]).lower() for i in range(0, len(toks) - words + 1, stride)]
        if len(wins) > cap:
            step = len(wins) / cap
            wins = [wins[int(i * step)] for i in range(cap)]
        out[name] = wins
    return out


@dataclass
class Corpus:
    """Tokenised snippets: ``input_ids`` / ``attention_mask`` [N, L], ``doc`` [N] (description
    index), ``train`` / ``test`` index tensors, ``docs`` the description names."""

    docs: List[str]
    texts: List[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    doc: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor

    def labels(self, seed: int, task: int) -> torch.Tensor:
        """Task ``task``'s binary label of every snippet."""
        return task_partition(seed, task, len(self.docs))[self.doc]

    def batch(self, idx: torch.Tensor) -> Dict[str, torch.Tensor]:
        mask = self.attention_mask[idx]
        length = int(mask.sum(1).max())  # trim the common padding: shorter sequences, faster steps
        return {"input_ids": self.input_ids[idx, :length], "attention_mask": mask[:, :length]}


def task_partition(seed: int, task: int, n_docs: int) -> torch.Tensor:
    """Task ``task``'s split of the descriptions into two halves: label per description."""
    perm = torch.randperm(n_docs, generator=torch.Generator().manual_seed(7919 * (seed + 1) + task))
    return (perm >= n_docs // 2).long()


def corpus(tokenizer, seed: int = 0, max_length: int = 16, words: int = 8, cap: int = 40,
           test_fraction: float = 0.25) -> Corpus:
    """Snippets of every description, tokenised (padded to ``max_length``), split train/test per
    description with a seeded permutation."""
    snips = snippets(words=words, cap=cap)
    docs = sorted(snips)
    texts, doc = [], []
    for i, d in enumerate(docs):
        texts += snips[d]
        doc += [i] * len(snips[d])
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    doc_t = torch.tensor(doc, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for i in range(len(docs)):
        idx = (doc_t == i).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = max(1, int(round(test_fraction * len(idx))))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return Corpus(docs, texts, enc["input_ids"], enc["attention_mask"], doc_t, torch.cat(train).sort().values,
                  torch.cat(test).sort().values)


def split_sizes(c: Corpus) -> Tuple[int, int]:
    return len(c.train), len(c.test)
