"""Readers for SentEval's transfer (classification) sets in its ``data/downstream`` layout.

MR, CR, SUBJ, MPQA (one sentence a line, one file per class), SST-2 (``sentence<TAB>label``),
TREC (``COARSE:fine question``, the 6 coarse classes) and MRPC (sentence pairs). Every line is
whitespace-normalised (``" ".join(line.split())``), as SentEval does when it splits lines into
words and the encoder joins them again. What a reader had to work around is kept in
``TransferTask.notes`` so a result can say it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from tp_rag_eval.sts_data import senteval_root

# name -> (folder, {file: label}) for the one-file-per-class sets (SentEval's label numbers).
BINARY_SETS: dict[str, tuple[str, dict[str, int]]] = {
    "MR": ("MR", {"rt-polarity.pos": 1, "rt-polarity.neg": 0}),
    "CR": ("CR", {"custrev.pos": 1, "custrev.neg": 0}),
    "SUBJ": ("SUBJ", {"subj.objective": 1, "subj.subjective": 0}),
    "MPQA": ("MPQA", {"mpqa.pos": 1, "mpqa.neg": 0}),
}
TREC_CLASSES = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
TASKS = ["MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"]

# How each task is scored (see tp_rag_eval.transfer).
PROTOCOL = {"MR": "cv", "CR": "cv", "SUBJ": "cv", "MPQA": "cv",
            "SST2": "dev_test", "TREC": "train_test", "MRPC": "train_test"}


@dataclass
class Split:
    """Texts (or, for pair tasks, ``texts`` and ``texts_b``) with integer labels."""

    texts: list[str]
    labels: np.ndarray
    texts_b: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> "Split":
        idx = [int(i) for i in indices]
        return Split([self.texts[i] for i in idx], self.labels[idx],
                     None if self.texts_b is None else [self.texts_b[i] for i in idx])

    def sentences(self) -> list[str]:
        return self.texts + (self.texts_b or [])


@dataclass
class TransferTask:
    name: str
    splits: dict[str, Split]  # "all" (cv) or "train"/"dev"/"test"
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        return PROTOCOL[self.name]

    @property
    def is_pairs(self) -> bool:
        return self.name == "MRPC"

    def sentences(self) -> list[str]:
        """Every distinct sentence of every split, in first-seen order."""
        return list(dict.fromkeys(s for split in self.splits.values() for s in split.sentences()))

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}


def _normalise(line: str) -> str:
    return " ".join(line.split())


def _read(path: Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"transfer data file {path} not found")
    with open(path, encoding=encoding, newline="") as handle:
        return handle.read().splitlines()


def load_binary(root: Path, name: str) -> TransferTask:
    folder, files = BINARY_SETS[name]
    texts, labels, empty = [], [], 0
    for file, label in files.items():
        for line in _read(senteval_root(root) / folder / file, "utf-8"):
            text = _normalise(line)
            if not text:  # SentEval would embed an empty sentence; nothing to embed here
                empty += 1
                continue
            texts.append(text)
            labels.append(label)
    notes = [f"{empty} empty lines skipped"] if empty else []
    repeated = len(texts) - len(set(texts))
    if repeated:  # kept, as in SentEval: a repeated sentence can sit in train and test folds
        notes.append(f"{repeated} sentences repeat an earlier one")
    classes = [f for f, _ in sorted(files.items(), key=lambda item: item[1])]
    return TransferTask(name, {"all": Split(texts, np.asarray(labels))}, classes, notes)


def load_sst2(root: Path) -> TransferTask:
    splits = {}
    for split in ("train", "dev", "test"):
        path = senteval_root(root) / "SST" / "binary" / f"sentiment-{split}"
        texts, labels = [], []
        for number, line in enumerate(_read(path, "utf-8"), 1):
            text, sep, label = line.rpartition("\t")
            if not sep or label.strip() not in ("0", "1"):
                raise ValueError(f"{path}:{number}: expected 'sentence<TAB>0|1', got {line[:80]!r}")
            texts.append(_normalise(text))
            labels.append(int(label))
        splits[split] = Split(texts, np.asarray(labels))
    return TransferTask("SST2", splits, ["negative", "positive"])


def load_trec(root: Path) -> TransferTask:
    splits, odd = {}, 0
    for split, file in (("train", "train_5500.label"), ("test", "TREC_10.label")):
        path = senteval_root(root) / "TREC" / file
        raw = path.read_bytes() if path.is_file() else b""
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            odd += sum(1 for b in raw if b > 127)
        # Not valid UTF-8 (one 0xF0 byte in train: "sister\xf0city"); SentEval reads latin-1.
        texts, labels = [], []
        for number, line in enumerate(_read(path, "latin-1"), 1):
            head, _, question = line.partition(" ")
            coarse = head.split(":", 1)[0]
            if coarse not in TREC_CLASSES or not question.strip():
                raise ValueError(f"{path}:{number}: expected 'COARSE:fine question', got {line[:80]!r}")
            texts.append(_normalise(question))
            labels.append(TREC_CLASSES.index(coarse))
        splits[split] = Split(texts, np.asarray(labels))
    notes = [f"read as latin-1 (as SentEval does): {odd} non-UTF-8 byte(s)"] if odd else []
    return TransferTask("TREC", splits, list(TREC_CLASSES), notes)


def load_mrpc(root: Path) -> TransferTask:
    splits = {}
    for split in ("train", "test"):
        path = senteval_root(root) / "MRPC" / f"msr_paraphrase_{split}.txt"
        lines = _read(path, "utf-8-sig")  # the header line starts with a BOM
        header = lines[0].split("\t") if lines else []
        if header[:1] != ["Quality"]:
            raise ValueError(f"{path}: expected the header 'Quality<TAB>#1 ID<TAB>...', got {header}")
        a, b, labels = [], [], []
        for number, line in enumerate(lines[1:], 2):
            cols = line.split("\t")
            if len(cols) != 5 or cols[0] not in ("0", "1"):
                raise ValueError(f"{path}:{number}: expected 5 tab-separated columns, got {len(cols)}")
            a.append(_normalise(cols[3]))
            b.append(_normalise(cols[4]))
            labels.append(int(cols[0]))
        splits[split] = Split(a, np.asarray(labels), b)
    return TransferTask("MRPC", splits, ["not paraphrase", "paraphrase"])


def load_transfer_task(root: Path, name: str) -> TransferTask:
    if name in BINARY_SETS:
        return load_binary(root, name)
    loaders = {"SST2": load_sst2, "TREC": load_trec, "MRPC": load_mrpc}
    if name not in loaders:
        raise ValueError(f"unknown transfer task {name!r}; one of {', '.join(TASKS)}")
    return loaders[name](root)


def stratified_sample(labels: np.ndarray, limit: Optional[int], seed: int) -> np.ndarray:
    """Sorted indices of a seeded, stratified sample of at most ``limit`` items (all if None)."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    classes = len(np.unique(labels))
    if limit < classes:
        raise ValueError(f"--limit {limit} is smaller than the number of classes ({classes})")
    from sklearn.model_selection import train_test_split

    chosen, _ = train_test_split(np.arange(n), train_size=limit, stratify=labels,
                                 random_state=seed)
    return np.sort(chosen)


def limit_task(task: TransferTask, limit: Optional[int], seed: int) -> TransferTask:
    """At most ``limit`` items per split (stratified, seeded); the task itself is unchanged."""
    if limit is None:
        return task
    splits = {name: split.take(stratified_sample(split.labels, limit, seed))
              for name, split in task.splits.items()}
    return TransferTask(task.name, splits, task.classes, list(task.notes))
