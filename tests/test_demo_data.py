"""The bundled demo data (data/demo, data/demo_zh): raw format, labels in the text, and a held-out set that is
new text for the fine-tuned model (issue #15: the old one was written like the training set, so the demo's
before/after F1 said nothing about other text)."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETS = {"demo": {"person", "organization", "location"}, "demo_zh": {"人物", "组织机构", "地点"}}
KEYS = {"NER": ("entity", ("entity", "entity_type")), "RE": ("relation", ("head", "relation", "tail"))}


def _records(folder: str, task: str, split: str) -> list:
    path = REPO / "data" / folder / task / f"{split}.json"
    if not path.is_file():
        pytest.skip(f"{path} (bundled demo data) missing")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _schema(folder: str, task: str) -> list:
    lines = (REPO / "data" / folder / task / "schema.json").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0 if task == "NER" else 1])


def _names(folder: str, split: str) -> set:
    """Person / organization / location strings of a split (NER entities and RE arguments), case-folded."""
    kinds = SETS[folder]
    names = {e["entity"].casefold() for r in _records(folder, "NER", split) for e in r["entity"]
             if e["entity_type"] in kinds}
    return names | {x[k].casefold() for r in _records(folder, "RE", split) for x in r["relation"]
                    for k in ("head", "tail")}


@pytest.mark.parametrize("folder", sorted(SETS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_raw_format_and_labels_in_text(folder, split):
    texts = {}
    for task, (field, keys) in KEYS.items():
        labels = set(_schema(folder, task))
        records = _records(folder, task, split)
        texts[task] = [r["text"] for r in records]
        for r in records:
            assert list(r) == ["text", field], r
            for item in r[field]:
                assert tuple(item) == keys, item
                assert item[keys[1] if task == "NER" else "relation"] in labels, item
                for key in (("entity",) if task == "NER" else ("head", "tail")):
                    assert item[key] and item[key] in r["text"], (item, r["text"])
            if task == "RE":  # spouse is written in both directions
                spouse = "spouse" if folder == "demo" else "配偶"
                pairs = {(x["head"], x["tail"]) for x in r[field] if x["relation"] == spouse}
                assert pairs == {(t, h) for h, t in pairs}, r
    assert texts["NER"] == texts["RE"]  # one set of texts, labelled for both tasks
    assert len(set(texts["NER"])) == len(texts["NER"])


@pytest.mark.parametrize("folder", sorted(SETS))
def test_held_out_texts_and_names_are_new(folder):
    train = {r["text"] for r in _records(folder, "NER", "train")}
    test = [r["text"] for r in _records(folder, "NER", "test")]
    assert not train & set(test)
    assert not _names(folder, "train") & _names(folder, "test")


def test_held_out_set_differs_in_style():
    """Headlines (some in upper case) and long sentences, which the original training texts never had."""
    texts = [r["text"] for r in _records("demo", "NER", "test")]
    words = [len(t.split()) for t in texts]
    assert len(texts) == 49
    assert sum(t == t.upper() for t in texts) >= 5
    assert sum(t == t.lower() for t in texts) >= 1
    assert sum(n <= 10 for n in words) >= 8
    assert sum(n >= 40 for n in words) >= 5
    assert sum(not r["relation"] for r in _records("demo", "RE", "test")) >= 10
    relations = {x["relation"] for r in _records("demo", "RE", "test") for x in r["relation"]}
    assert relations == set(_schema("demo", "RE"))
