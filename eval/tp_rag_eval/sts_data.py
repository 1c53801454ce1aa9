"""Readers for SentEval's ``data/downstream`` layout: STS12-16, STS Benchmark, SICK.

Each reader returns :class:`Pairs` (sentence lists and gold scores). STS12-16 come as one
:class:`Pairs` per subset; the year's "all" score pools every scored pair of the year.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

# SentEval's file lists (STS13 without the licensed SMT set).
STS_YEARS: dict[str, tuple[str, list[str]]] = {
    "STS12": ("STS12-en-test", ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN",
                                "surprise.SMTnews"]),
    "STS13": ("STS13-en-test", ["FNWN", "headlines", "OnWN"]),
    "STS14": ("STS14-en-test", ["deft-forum", "deft-news", "headlines", "images", "OnWN",
                                "tweet-news"]),
    "STS15": ("STS15-en-test", ["answers-forums", "answers-students", "belief", "headlines",
                                "images"]),
    "STS16": ("STS16-en-test", ["answer-answer", "headlines", "plagiarism", "postediting",
                                "question-question"]),
}
STSB_SPLITS = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
SICK_SPLITS = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}


@dataclass
class Pairs:
    name: str
    sent1: list[str] = field(default_factory=list)
    sent2: list[str] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.gold)

    def add(self, a: str, b: str, score: float) -> None:
        self.sent1.append(a)
        self.sent2.append(b)
        self.gold.append(float(score))

    def head(self, n: int) -> "Pairs":
        return Pairs(self.name, self.sent1[:n], self.sent2[:n], self.gold[:n])

    def sample(self, n: int, seed: int = 0) -> "Pairs":
        """``n`` pairs drawn without replacement by a seeded generator, in file order (the
        first pairs of a file are often one genre: a head is not a fair sample)."""
        if n >= len(self):
            return self
        keep = sorted(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return Pairs(self.name, [self.sent1[i] for i in keep], [self.sent2[i] for i in keep],
                     [self.gold[i] for i in keep])

    def sentences(self) -> list[str]:
        """Unique sentences, in first-seen order (each is embedded once)."""
        return list(dict.fromkeys(self.sent1 + self.sent2))


def senteval_root(data_root: Path) -> Path:
    """Accept the data root (with ``senteval/``) or the SentEval folder itself."""
    data_root = Path(data_root)
    return data_root / "senteval" if (data_root / "senteval").is_dir() else data_root


def _read_lines(path: Path) -> list[str]:
    with io.open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def load_sts_year(root: Path, year: str) -> list[Pairs]:
    """STS12-16: ``STS.input.<set>.txt`` (two tab-separated sentences) with ``STS.gs.<set>.txt``
    (gold, one line per pair). An empty gold line means the pair is unscored: it is skipped."""
    if year not in STS_YEARS:
        raise ValueError(f"unknown STS year {year!r}; one of {', '.join(STS_YEARS)}")
    folder_name, subsets = STS_YEARS[year]
    folder = senteval_root(root) / "STS" / folder_name
    if not folder.is_dir():
        raise FileNotFoundError(f"{year}: folder {folder} not found")
    out = []
    for subset in subsets:
        inputs = _read_lines(folder / f"STS.input.{subset}.txt")
        golds = _read_lines(folder / f"STS.gs.{subset}.txt")
        if len(golds) < len(inputs):  # a missing trailing newline-only gold line
            golds += [""] * (len(inputs) - len(golds))
        pairs = Pairs(f"{year}/{subset}")
        for line, gold in zip(inputs, golds):
            if not gold.strip():
                continue
            a, b = line.split("\t")[:2]
            pairs.add(a, b, float(gold))
        out.append(pairs)
    return out


def load_stsb(root: Path, split: str = "test") -> Pairs:
    """STS Benchmark: tab-separated, score in column 5, sentences in columns 6 and 7."""
    path = senteval_root(root) / "STS" / "STSBenchmark" / STSB_SPLITS[split]
    pairs = Pairs(f"STSB-{split}")
    for line in _read_lines(path):
        cols = line.split("\t")
        if len(cols) < 7:
            continue
        pairs.add(cols[5], cols[6], float(cols[4]))
    return pairs


def load_sick(root: Path, split: str = "test") -> Pairs:
    """SICK relatedness (SICK-R): pair_ID, sentence A, sentence B, relatedness_score, ...

    Read by column position after the header line, so translated copies whose header names
    differ (e.g. ``sentença_a``) read the same way."""
    path = senteval_root(root) / "SICK" / SICK_SPLITS[split]
    pairs = Pairs(f"SICK-R-{split}")
    for line in _read_lines(path)[1:]:
        cols = line.split("\t")
        if len(cols) < 4:
            continue
        pairs.add(cols[1], cols[2], float(cols[3]))
    return pairs


# Task names accepted by the STS CLI -> list of Pairs and whether to pool ("all").
TASKS = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSB-dev", "STSB-test", "SICK-R-test"]


def load_task(root: Path, task: str, limit: Optional[int] = None,
              sample: Optional[int] = None, seed: int = 0) -> list[Pairs]:
    """The task's scored pairs; ``limit``: the first N per subset (smoke runs); ``sample``: a
    seeded random N per subset (a stated sample of a set too slow to run whole)."""
    if task in STS_YEARS:
        subsets = load_sts_year(root, task)
    elif task.startswith("STSB-"):
        subsets = [load_stsb(root, task.split("-", 1)[1])]
    elif task.startswith("SICK-R-"):
        subsets = [load_sick(root, task.rsplit("-", 1)[1])]
    else:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if sample:
        subsets = [p.sample(sample, seed) for p in subsets]
    if limit:
        subsets = [p.head(limit) for p in subsets]
    return subsets


def available_tasks(root: Path) -> list[str]:
    base = senteval_root(root)
    out = []
    for task in TASKS:
        if task in STS_YEARS:
            ok = (base / "STS" / STS_YEARS[task][0]).is_dir()
        elif task.startswith("STSB"):
            ok = (base / "STS" / "STSBenchmark").is_dir()
        else:
            ok = (base / "SICK").is_dir()
        if ok:
            out.append(task)
    return out
