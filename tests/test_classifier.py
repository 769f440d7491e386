"""The demo classifier: learns from the train split only and writes reference-format JSON."""

import json

import pandas as pd
import pytest

from genpromp.demo.classifier import json_accuracy, train_demo_classifier
from genpromp.data.indexing import index_dataset
from genpromp.data.scores import import_scores
from genpromp.demo.world import write_cub_dataset


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    root = write_cub_dataset(tmp / "CUB", n_classes=4, train_per_class=8, test_per_class=5,
                             image_size=(96, 128), seed=0)
    index_dataset({"layout": "cub", "root": str(root), "meta_word": "bird", "token_prefix": "cub"}, tmp / "index")
    return tmp, root


def test_classifier_accuracy_and_format(cub):
    tmp, root = cub
    # hide the test labels: the classifier must not need them
    test = pd.read_parquet(tmp / "index/test.parquet")
    test.drop(columns=["label"]).to_parquet(tmp / "index/test.parquet")
    out = train_demo_classifier(tmp / "index", root, "cub", tmp / "s.json", epochs=40)
    test.to_parquet(tmp / "index/test.parquet")
    data = json.loads(out.read_text())
    assert set(data) == {p[len("images/"):] for p in test["path"]}           # CUB keys keep ".jpg"
    assert all(len(v["pred_scores"]) == 4 for v in data.values())
    assert json_accuracy(out, tmp / "index", "cub") >= 0.85
    import_scores(out, tmp / "index", tmp / "scores.parquet")
    assert len(pd.read_parquet(tmp / "scores.parquet")) == len(test)
