"""A pipeline saved by an earlier release loads and predicts exactly what it did then.

The fixture (`tests/fixtures/sample_pipeline`, made by `tests/fixtures/make_sample_pipeline.py`)
holds a small trained pipeline and its predictions on the shipped sample's dev texts when it
was saved: entities, their probabilities under the saved temperatures, and n-best analyses.
"""

from pathlib import Path

import pytest
import spacy
import srsly

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_sample_pipeline_predicts_as_when_saved() -> None:
    saved = srsly.read_json(FIXTURES / "saved_predictions.json")
    runtime = {"confidence": True, "nbest": 3}
    nlp = spacy.load(FIXTURES / "sample_pipeline", config={"components": {"ner": runtime}})
    assert nlp.get_pipe("ner").cfg["unseen_temperature"] == 1.6
    assert sum(len(p["ents"]) for p in saved["predictions"]) > 100
    for text, expected, doc in zip(saved["texts"], saved["predictions"], nlp.pipe(saved["texts"])):
        assert [[e.start_char, e.end_char, e.label_] for e in doc.ents] == expected["ents"], text
        scores = [float(score) for score in doc.spans["bilstm_crf"].attrs["scores"]]
        assert scores == pytest.approx(expected["scores"], rel=1e-5, abs=1e-6), text
        nbest = [
            doc.spans[f"bilstm_crf_nbest_{rank}"].attrs["probability"]
            for rank in range(1, 4)
            if f"bilstm_crf_nbest_{rank}" in doc.spans
        ]
        assert nbest == pytest.approx(expected["nbest"], rel=1e-5, abs=1e-6), text
